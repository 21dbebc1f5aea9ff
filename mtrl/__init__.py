"""The runtime around the aggregators: per-task gradients, trainers, evaluation, logging."""
