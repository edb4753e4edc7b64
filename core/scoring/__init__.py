"""Scoring the methods: accuracy statistics and breakdowns, significance, the scorecard against planted slices, the score command's runs."""
