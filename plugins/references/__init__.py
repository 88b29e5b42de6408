"""Built-in reference plugins: representations scored by the same heads as the model, next to it.

``onehot`` (residue indicators) and ``random`` (the evaluated architecture with fresh weights) show
what pretraining buys; ``unirep`` and ``t5_encoder`` show where a real pretrained protein LM stands.
Each is registered under the ``plmforge.references`` entry point, as a third party's would be.
"""
