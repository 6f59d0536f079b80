"""Progressive delivery: `fnpack canary` moves an alias to a new version step by step, judges the new version
by the target's own metrics against the old one, and promotes it or rolls it back by itself.

- `policy`: the steps, the interval and the thresholds (from the CLI or the spec's `canary:` section);
- `observer`: the one interface a target's metrics are read through (Flagger's `observers.Interface`):
  figures per version for a window; each target has its own (the local gateway's metrics, CloudWatch,
  Prometheus with the queries of Knative's queue-proxy or OpenFaaS's gateway);
- `analysis`: compares two windows of figures with the thresholds, knowing no target;
- `rollout`: the loop, every step an alias move in the shared history, safe to interrupt and resume;
- `load`: synthetic traffic from the spec's samples, for functions that see no traffic yet.
"""
