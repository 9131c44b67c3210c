"""The experiments, one folder each (the role of lingua's and the paper's ``apps/``): ``memory`` (the paper's
Section 5, parameters needed per fact, from scratch), ``finetune`` (Section 6, fine-tuning a pretrained model) and
``ste`` (learning a new tool by simulated trial and error). Each holds its entry point (``python -m
studies.<name>``), its library, its report and a README with its commands and measured results.
"""
