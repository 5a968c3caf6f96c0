"""Registration of evaluated students in MLflow and the gate that moves the alias `champion`."""
