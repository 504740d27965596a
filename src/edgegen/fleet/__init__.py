"""Fleet control plane: signed model registry, device enrolment, desired state (see README.md)."""
