"""Reporting: what a plan says to a person, read from the plan alone: the summary, the terminal tables,
report.html and `explain`.
"""
