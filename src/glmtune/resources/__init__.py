"""Data files shipped with glmtune (the quickstart dataset)."""
