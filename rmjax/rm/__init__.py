"""The reward-model program: spec, builder, step, batches, ensembles, MetaRM, contrastive
terms, preference strength, feature cache, loading and the trainer."""
