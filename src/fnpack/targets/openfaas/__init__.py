"""The openfaas target."""
