"""What a user reads: the paper's tables as data and their rendering (`tables`), figures
(`plots`) and MLflow tracking (`tracking`)."""
