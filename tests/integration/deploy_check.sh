#!/usr/bin/env bash
# Offline checks of deploy/: Prometheus config and rules (promtool), the
# Kubernetes manifests render with kustomize and contain what the docs
# promise, and the Grafana dashboard is valid JSON.
#   tests/integration/deploy_check.sh [REPO_ROOT]
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/../.." && pwd)}"
deploy="$root/deploy"
fail() { echo "deploy_check: FAIL: $*" >&2; exit 1; }

command -v promtool >/dev/null || fail "promtool missing (scripts/setup.sh installs prometheus)"
# --syntax-only: the CA and token files it names exist only in the cluster.
promtool check config --syntax-only "$deploy/prometheus/prometheus.yml"
promtool check rules "$deploy/prometheus/rules.yml"

node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' \
  "$deploy/grafana/quantd-dashboard.json" || fail "dashboard is not valid JSON"

if ! command -v kubectl >/dev/null; then
  echo "deploy_check: kubectl not installed; skipping the kustomize render"
  exit 77
fi
# deploy/, and the Operator's ServiceMonitor applied beside it.
rendered="$(kubectl kustomize "$deploy"; cat "$deploy/operator/servicemonitor.yaml")"
for expected in "kind: Deployment" "kind: Service" "kind: ServiceMonitor" "kind: ConfigMap" \
    "runAsNonRoot: true" "readOnlyRootFilesystem: true" "startupProbe:" "readinessProbe:" \
    "livenessProbe:" "path: /v2/health/ready" "- /usr/local/bin/quantctl" "- --tls_ca=/etc/quantd/tls/ca.crt" "fsGroupChangePolicy: OnRootMismatch" "scheme: HTTPS" "name: metrics" \
    "kind: PersistentVolumeClaim" "claimName: quantd-data" "--max_data_bytes=" "publishNotReadyAddresses: true" \
    "jobLabel: app.kubernetes.io/name" "name: https" "name: tls-grpc" "namespace: quantd" "kind: Namespace" \
    "--model_vet_memory_bytes=" "- --service=inference.GRPCInferenceService" \
    "secretName: quantd-tls" "secretName: quantd-tokens" "--tls_cert=/etc/quantd/tls/tls.crt" \
    "--token_file=/etc/quantd/tokens/tokens" "scheme: https" "bearerTokenSecret:"; do
  grep -qF -- "$expected" <<<"$rendered" || fail "rendered manifests lack '$expected'"
done
echo "deploy_check: OK"
