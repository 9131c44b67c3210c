"""The fine-tuning study (the paper's Section 6): a pretrained model learns facts in-tool without forgetting."""
