"""The shared batching inference server: ingress, admission, batcher, heavy model, scheduler."""
