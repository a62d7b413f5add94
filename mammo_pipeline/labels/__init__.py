"""The label store, active-learning queues and the labeling app."""
