"""Backbone pretraining: a small causal language model trained on task text, saved as a
Hugging Face folder that ``train-rm``'s ``model.init_from`` reads (pretrain-diverse
ensembles: one pretraining seed per member)."""
