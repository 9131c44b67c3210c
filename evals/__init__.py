"""Models, policies and measurements: recall, retention, divergence, HellaSwag and counterfactual faithfulness."""
