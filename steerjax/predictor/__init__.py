"""Predicting steerability early (Fan et al.): testbed, judges, features, CatBoost, guided search."""
