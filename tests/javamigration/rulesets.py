"""Realistic trino-gateway MVEL rules files used by the conversion tests.

The first ones are the examples of trino-gateway's routing-rules documentation and of its own
test resources; the others are the kinds of rules teams write (by team, user, client tags, SQL
facts, regular expressions, if/else actions) and rules that cannot be converted exactly.
``UNCONVERTIBLE[name]`` lists the rules each file must report as not converted.
"""
from __future__ import annotations

# trino-gateway docs/routing-rules.md: "Defining your routing rules" (no priorities: file order)
DOCS_BASIC = r"""
---
name: "airflow"
description: "if query from airflow, route to etl group"
condition: 'request.getHeader("X-Trino-Source") == "airflow"'
actions:
  - 'result.put("routingGroup", "etl")'
---
name: "airflow special"
description: "if query from airflow with special label, route to etl-special group"
condition: 'request.getHeader("X-Trino-Source") == "airflow" && request.getHeader("X-Trino-Client-Tags") contains "label=special"'
actions:
  - 'result.put("routingGroup", "etl-special")'
"""

# docs: atomic rules; the test resource routing_rules_atomic.yml adds isEmpty()
DOCS_ATOMIC = r"""
---
name: "airflow"
description: "if query from airflow, route to etl group"
condition: "request.getHeader(\"X-Trino-Source\") == \"airflow\" && (request.getHeader(\"X-Trino-Client-Tags\") == null || request.getHeader(\"X-Trino-Client-Tags\").isEmpty())"
actions:
  - "result.put(FileBasedRoutingGroupSelector.RESULTS_ROUTING_GROUP_KEY, \"etl\")"
---
name: "airflow special"
description: "if query from airflow with special label, route to etl-special group"
condition: "request.getHeader(\"X-Trino-Source\") == \"airflow\" && request.getHeader(\"X-Trino-Client-Tags\") contains \"label=special\""
actions:
  - "result.put(FileBasedRoutingGroupSelector.RESULTS_ROUTING_GROUP_KEY, \"etl-special\")"
"""

# docs: "Rule priority" (the more specific rule fires last)
DOCS_PRIORITIES = r"""
---
name: "airflow"
description: "if query from airflow, route to etl group"
priority: 0
condition: 'request.getHeader("X-Trino-Source") == "airflow"'
actions:
  - 'result.put("routingGroup", "etl")'
---
name: "airflow special"
description: "if query from airflow with special label, route to etl-special group"
priority: 1
condition: 'request.getHeader("X-Trino-Source") == "airflow" && request.getHeader("X-Trino-Client-Tags") contains "label=special"'
actions:
  - 'result.put("routingGroup", "etl-special")'
"""

# docs: "If statements (MVEL Flow Control)", with the stray quote of the old docs fixed
DOCS_IF = r"""
---
name: "airflow rules"
description: "if query from airflow"
condition: "request.getHeader(\"X-Trino-Source\") == \"airflow\""
actions:
  - "if (request.getHeader(\"X-Trino-Client-Tags\") contains \"label=foo\") {
      result.put(\"routingGroup\", \"etl-foo\")
    }
    else if (request.getHeader(\"X-Trino-Client-Tags\") contains \"label=bar\") {
      result.put(\"routingGroup\", \"etl-bar\")
    }
    else {
      result.put(\"routingGroup\", \"etl\")
    }"
"""

# trino-gateway's test resource routing_rules_if_statements.yml
TEST_IF = r"""
---
name: "airflow"
description: "if query from airflow, route to etl group"
condition: "request.getHeader(\"X-Trino-Source\") == \"airflow\""
actions:
  - "if (request.getHeader(\"X-Trino-Client-Tags\") contains \"label=special\") {
      result.put(FileBasedRoutingGroupSelector.RESULTS_ROUTING_GROUP_KEY, \"etl-special\")
    }
    else {
      result.put(FileBasedRoutingGroupSelector.RESULTS_ROUTING_GROUP_KEY, \"etl\")
    }"
"""

TEAMS = r"""
---
name: bi-dashboards
description: Superset and Tableau dashboards go to the BI clusters
priority: 10
condition: 'request.getHeader("X-Trino-Source") == "superset" || request.getHeader("X-Trino-Source") == "tableau"'
actions:
  - 'result.put("routingGroup", "bi")'
---
name: service-accounts
description: batch service accounts
priority: 20
condition: 'request.getHeader("X-Trino-User") != null && request.getHeader("X-Trino-User").startsWith("svc_")'
actions:
  - 'result.put("routingGroup", "etl")'
---
name: data-science
priority: 25
condition: 'request.getHeader("X-Team") == "ds"'
actions:
  - 'result.put("routingGroup", "ds")'
---
name: vip
priority: 30
condition: 'trinoRequestUser.userExistsAndEquals("will") || trinoRequestUser.userExistsAndEquals("bob")'
actions:
  - 'result.put("routingGroup", "vip")'
---
name: untagged-interactive
description: throws (and so never matches) when the request has no client tags
priority: 5
condition: '!request.getHeader("X-Trino-Client-Tags").contains("etl")'
actions:
  - 'result.put("routingGroup", "interactive")'
---
name: known-user
priority: 1
condition: 'trinoRequestUser.getUser().isPresent() && !trinoRequestUser.getUser().get().isEmpty()'
actions:
  - 'result.put("routingGroup", "known")'
"""

QUERY_PROPERTIES = r"""
---
name: system-catalog
description: capture queries to the system catalog
condition: 'trinoQueryProperties.getCatalogs().contains("system")'
actions:
  - 'result.put("routingGroup", "system")'
---
name: hot-table
priority: 5
condition: 'trinoQueryProperties.tablesContains("hive.raw.events")'
actions:
  - 'result.put("routingGroup", "hot")'
---
name: writes
priority: 3
condition: 'trinoQueryProperties.getResourceGroupQueryType() == "INSERT" || trinoQueryProperties.getResourceGroupQueryType().equals("DELETE")'
actions:
  - 'result.put("routingGroup", "writes")'
---
name: catalog-schema
priority: 4
condition: |
  trinoQueryProperties.getCatalogSchemas.contains("catx.nondefault")
  && trinoQueryProperties.getCatalogSchemas.contains("caty.default")
  && !trinoQueryProperties.getCatalogSchemas.contains("catx.default")
actions:
  - 'result.put("routingGroup", "catalog-schema-group")'
---
name: explains
priority: 6
condition: 'trinoQueryProperties.getQueryType() == "Explain"'
actions:
  - 'result.put("routingGroup", "explain")'
---
name: metadata
priority: 6
condition: 'trinoQueryProperties.getQueryType().startsWith("Show") || trinoQueryProperties.getQueryType().startsWith("Describe")'
actions:
  - 'result.put("routingGroup", "metadata")'
---
name: ddl-on-raw
priority: 7
condition: 'trinoQueryProperties.getResourceGroupQueryType() == "DATA_DEFINITION" && trinoQueryProperties.getSchemas() contains "raw"'
actions:
  - 'result.put("routingGroup", "ddl")'
---
name: default-catalog-hive
priority: 1
condition: 'trinoQueryProperties.getDefaultCatalog().orElse("none") == "hive"'
actions:
  - 'result.put("routingGroup", "hive-default")'
---
name: defaults-group
priority: 2
condition: 'trinoQueryProperties.getDefaultCatalog().equals(java.util.Optional.of("catx")) && trinoQueryProperties.getDefaultSchema().isPresent()'
actions:
  - 'result.put("routingGroup", "defaults-group")'
---
name: unparsable
priority: 8
condition: 'trinoQueryProperties.getResourceGroupQueryType().isEmpty()'
actions:
  - 'result.put("routingGroup", "unparsable")'
---
name: new-query
priority: -5
condition: 'trinoQueryProperties.isNewQuerySubmission()'
actions:
  - 'result.put("routingGroup", "new")'
---
name: nomatch
description: default group to catch if no other rules fired
priority: -10
condition: "true"
actions:
  - 'result.put("routingGroup", "no-match")'
"""

STRINGS = r"""
---
name: airflow-regex
priority: 1
condition: 'request.getHeader("X-Trino-Source") ~= "airflow.*"'
actions:
  - 'result.put("routingGroup", "regex")'
---
name: airflow-suffix
priority: 2
condition: 'request.getHeader("X-Trino-Source") != null && request.getHeader("X-Trino-Source").endsWith("airflow")'
actions:
  - 'result.put("routingGroup", "suffix")'
---
name: airflow-any-case
priority: 3
condition: 'request.getHeader("X-Trino-Source") != null && request.getHeader("X-Trino-Source").equalsIgnoreCase("AirFlow")'
actions:
  - 'result.put("routingGroup", "any-case")'
---
name: lower-prefix
priority: 4
condition: 'request.getHeader("X-Trino-Source").toLowerCase().startsWith("air") && !request.getHeader("X-Trino-Source").equals("airflow")'
actions:
  - 'result.put("routingGroup", "lower-prefix")'
---
name: label-foo-or-bar
priority: 5
condition: 'request.getHeader("X-Trino-Client-Tags") != null && request.getHeader("X-Trino-Client-Tags").matches("(.*,)?label=(foo|bar)(,.*)?")'
actions:
  - 'result.put("routingGroup", "labels")'
---
name: null-regex
priority: 6
condition: "request.getHeader('X-Trino-Source') ~= 'nul+'"
actions:
  - 'result.put("routingGroup", "null-source")'
---
name: empty-tags
priority: 7
condition: '"".equals(request.getHeader("X-Trino-Client-Tags")) || request.getHeader("X-Trino-Source") == ""'
actions:
  - 'result.put("routingGroup", "empty")'
---
name: trimmed-upper
priority: 8
condition: 'request.getHeader("X-Team") != null && request.getHeader("X-Team").trim().toUpperCase() == "DS"'
actions:
  - 'result.put("routingGroup", "team-upper")'
"""

IF_ELSE = r"""
---
name: routing-by-tags
priority: 2
condition: 'request.getHeader("X-Trino-Source") != null'
actions:
  - 'result.put("routingGroup", "sourced")'
  - |
    // throws when the request has no client tags: the rest of this rule is skipped
    if (request.getHeader("X-Trino-Client-Tags").contains("label=foo")) {
      result.put("routingGroup", "foo");
    } else if (request.getHeader("X-Trino-Client-Tags") contains "etl") {
      if (trinoRequestUser.userExistsAndEquals("alice")) {
        result.put("routingGroup", "alice-etl")
      } else {
        result.put("routingGroup", null)
      }
    }
  - |
    if (request.getHeader("X-Trino-Source") == "superset") { result.put("routingGroup", "bi") }
---
name: superset-untagged
priority: 3
condition: 'request.getHeader("X-Trino-Source") == "superset" && request.getHeader("X-Trino-Client-Tags") == null'
actions:
  - 'result.put("routingGroup", "bi-untagged"); result.put("routingGroup", "bi-untagged-2")'
---
name: empty-action
priority: 1
condition: 'request.getHeader("X-Trino-Source") == "dbt-airflow"'
actions:
  - ''
  - 'result.put("routingGroup", "dbt")'
"""

TIES = r"""
---
name: b-rule
priority: 5
condition: 'request.getHeader("X-Trino-Source") == "airflow"'
actions:
  - 'result.put("routingGroup", "b")'
---
name: a-rule
priority: 5
condition: 'request.getHeader("X-Trino-Source") contains "air"'
actions:
  - 'result.put("routingGroup", "a")'
---
name: no-priority
condition: 'trinoRequestUser.userExistsAndEquals("alice")'
actions:
  - 'result.put("routingGroup", "alice")'
---
name: catch-all
priority: -3
condition: 'true'
actions:
  - 'result.put("routingGroup", "catch-all")'
"""

UNCONVERTIBLE_RULES = r"""
---
name: "initialize state"
priority: 0
condition: "true"
actions:
  - |
    state.put("triggeredRules",new HashSet())
---
name: "airflow"
priority: 1
condition: |
  request.getHeader("X-Trino-Source") == "airflow"
actions:
  - |
    result.put(FileBasedRoutingGroupSelector.RESULTS_ROUTING_GROUP_KEY, "etl")
  - |
    state.get("triggeredRules").add("airflow")
---
name: "airflow special"
priority: 2
condition: |
  state.get("triggeredRules").contains("airflow") && request.getHeader("X-Trino-Client-Tags") contains "label=special"
actions:
  - |
    result.put(FileBasedRoutingGroupSelector.RESULTS_ROUTING_GROUP_KEY, "etl-special")
---
name: routing_cluster_pinning_rule
condition: "request.getHeader(\"X-Trino-User\") == \"user1\""
actions:
  - "result.put(\"routingCluster\", \"cluster01\")"
---
name: selects-only
condition: 'trinoQueryProperties.getQueryType() == "Query"'
actions:
  - 'result.put("routingGroup", "selects")'
---
name: inserts-only
condition: 'trinoQueryProperties.getQueryType().toLowerCase.equals("insert")'
actions:
  - 'result.put("routingGroup", "inserts")'
---
name: show-only
condition: 'trinoQueryProperties.getQueryType().startsWith("Show")'
actions:
  - 'result.put("routingGroup", "show")'
---
name: batch-hint
condition: 'trinoQueryProperties.getBody().contains("/* batch */")'
actions:
  - 'result.put("routingGroup", "batch")'
---
name: posts
condition: 'request.getMethod() == "POST"'
actions:
  - 'result.put("routingGroup", "posts")'
---
name: quoted-table
condition: 'trinoQueryProperties.tablesContains("cat_default.\"schem_default\".tblz")'
actions:
  - 'result.put("routingGroup", "quoted")'
---
name: helper-function
condition: 'def isNullOrEmpty(s) { s == null || s.isEmpty() }; isNullOrEmpty(request.getHeader("X-Trino-Source"))'
actions:
  - 'result.put("routingGroup", "helper")'
---
name: upper-catalog
condition: 'trinoQueryProperties.getCatalogs().contains("Hive")'
actions:
  - 'result.put("routingGroup", "hive")'
---
name: authenticated
condition: 'request.getHeader("Authorization") != null'
actions:
  - 'result.put("routingGroup", "authenticated")'
---
name: bad-group
condition: 'request.getHeader("X-Trino-Source") == "superset"'
actions:
  - 'result.put("routingGroup", "bi dashboards")'
---
name: ternary
condition: 'request.getHeader("X-Trino-Source") == null ? false : true'
actions:
  - 'result.put("routingGroup", "ternary")'
---
name: airflow rule group
compositeRuleType: "ActivationRuleGroup"
composingRules:
  - name: "airflow special"
    priority: 0
    condition: 'request.getHeader("X-Trino-Source") == "airflow"'
    actions:
      - 'result.put("routingGroup", "etl-special")'
---
name: qualified-names
description: converted (as false, with a note) - getTables() never contains a String
condition: 'trinoQueryProperties.getTables().contains("hive.raw.events")'
actions:
  - 'result.put("routingGroup", "never")'
---
name: superset
description: convertible, so the rest of this file is still compared
priority: 3
condition: 'request.getHeader("X-Trino-Source") == "superset" || trinoQueryProperties.getQueryType() != "Explain"'
actions:
  - 'result.put("routingGroup", "bi")'
"""

RULESETS = {
    "docs_basic": DOCS_BASIC, "docs_atomic": DOCS_ATOMIC, "docs_priorities": DOCS_PRIORITIES,
    "docs_if": DOCS_IF, "test_if": TEST_IF, "teams": TEAMS, "query_properties": QUERY_PROPERTIES,
    "strings": STRINGS, "if_else": IF_ELSE, "ties": TIES, "unconvertible": UNCONVERTIBLE_RULES,
}

UNCONVERTIBLE = {name: set() for name in RULESETS}
UNCONVERTIBLE["unconvertible"] = {
    "initialize state", "airflow", "airflow special", "routing_cluster_pinning_rule",
    "selects-only", "inserts-only", "show-only", "batch-hint", "posts", "quoted-table",
    "helper-function", "upper-catalog", "authenticated", "bad-group", "ternary", "airflow rule group",
}
