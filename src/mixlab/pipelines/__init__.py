"""The stage graph, resumable pipeline runs, the report; shipped YAML pipelines."""
