"""The rules example of the rules issue (rules/etl.yaml), shared by the tests that use it."""

ISSUE_EXAMPLE = """\
name: etl-tools
priority: 10
condition: source =~ "(airflow|dbt).*" or "etl" in clientTags
routingGroup: etl
---
name: big-scans
priority: 20
condition: queryType == "INSERT" or "hive.raw.events" in tables
routingGroup: etl
"""
