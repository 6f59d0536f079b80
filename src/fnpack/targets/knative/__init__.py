"""The knative target."""
