"""batchserve: an inference web service for trained PyTorch MLP and RNN models."""
