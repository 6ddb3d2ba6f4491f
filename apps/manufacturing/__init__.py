"""The manufacturing predictive-maintenance twin app: asset twins, work orders and a live fleet dashboard."""
