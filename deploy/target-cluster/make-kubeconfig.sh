#!/usr/bin/env bash
# Write a minimal kubeconfig for fleet-exporter from the CURRENT kubectl context.
#
#   make-kubeconfig.sh CLUSTER_NAME [OUTPUT_DIR]      (OUTPUT_DIR defaults to ./clusters)
#
# Run it after `kubectl apply -k deploy/target-cluster` in the cluster that the current
# context points at. It writes OUTPUT_DIR/CLUSTER_NAME.yaml, mode 0600, holding exactly
# one cluster (the context's API server URL, its CA inline, and tls-server-name/proxy-url
# if the context has them), one user (the fleet-exporter-reader ServiceAccount's token)
# and one context. Nothing else from your kubeconfig is copied: not your credentials,
# not your other clusters. The file name is the cluster's name in every metric.
#
# It refuses to overwrite an existing file, and never prints the token.
# Environment: KUBECTL (default kubectl), NAMESPACE (default longhorn-system),
# TOKEN_SECRET (default fleet-exporter-reader-token).
set -euo pipefail

kubectl_bin=${KUBECTL:-kubectl}
namespace=${NAMESPACE:-longhorn-system}
secret=${TOKEN_SECRET:-fleet-exporter-reader-token}
user=fleet-exporter-reader

die() {
  printf 'make-kubeconfig.sh: %s\n' "$*" >&2
  exit 1
}

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
name=$1
dir=${2:-clusters}

# The exporter's rule for cluster names (fleet_exporter/config.py): safe as a label value,
# a file name and a URL segment.
if [[ ! $name =~ ^[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$ ]]; then
  die "invalid cluster name '$name': use letters, digits, '.', '_' and '-', starting and ending with a letter or digit, at most 128 characters"
fi
[[ -d $dir ]] || die "output directory '$dir' does not exist"
out="$dir/$name.yaml"
if [[ -e $out || -L $out ]]; then
  die "'$out' already exists; remove it first if you mean to replace it"
fi
command -v "$kubectl_bin" >/dev/null 2>&1 || die "'$kubectl_bin' not found on PATH"

# One field of the current context's cluster, with file references inlined (--flatten).
cluster_field() {
  "$kubectl_bin" config view --minify --raw --flatten -o "jsonpath={.clusters[0].cluster.$1}"
}

context=$("$kubectl_bin" config current-context 2>/dev/null) ||
  die "no current kubectl context: select one with 'kubectl config use-context'"
server=$(cluster_field server)
[[ -n $server ]] || die "context '$context' has no cluster server URL"
ca_data=$(cluster_field certificate-authority-data)
tls_server_name=$(cluster_field tls-server-name)
proxy_url=$(cluster_field proxy-url)

# The token controller fills the Secret shortly after it is created: wait a little.
token_b64=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  token_b64=$("$kubectl_bin" -n "$namespace" get secret "$secret" -o 'jsonpath={.data.token}') ||
    die "cannot read Secret $namespace/$secret in context '$context': apply deploy/target-cluster first"
  [[ -n $token_b64 ]] && break
  sleep 1
done
[[ -n $token_b64 ]] || die "Secret $namespace/$secret has no token yet (is the ServiceAccount there?)"
token=$(printf '%s' "$token_b64" | base64 -d) || die "Secret $namespace/$secret holds an undecodable token"

# Without a CA in the context (e.g. insecure-skip-tls-verify), use the cluster CA that
# Kubernetes put in the token Secret. Never write a kubeconfig that skips verification.
if [[ -z $ca_data ]]; then
  ca_data=$("$kubectl_bin" -n "$namespace" get secret "$secret" -o 'jsonpath={.data.ca\.crt}')
  [[ -n $ca_data ]] || die "context '$context' has no CA data and the Secret has no ca.crt"
fi

# noclobber makes the existence check and the creation one step; umask makes it 0600 from
# the first byte. Every value is base64, a URL or a checked name: safe in double quotes.
(
  umask 077
  set -o noclobber
  {
    printf 'apiVersion: v1\nkind: Config\n'
    printf 'clusters:\n- name: "%s"\n  cluster:\n' "$name"
    printf '    server: "%s"\n' "$server"
    printf '    certificate-authority-data: "%s"\n' "$ca_data"
    if [[ -n $tls_server_name ]]; then printf '    tls-server-name: "%s"\n' "$tls_server_name"; fi
    if [[ -n $proxy_url ]]; then printf '    proxy-url: "%s"\n' "$proxy_url"; fi
    printf 'users:\n- name: "%s"\n  user:\n    token: "%s"\n' "$user" "$token"
    printf 'contexts:\n- name: "%s"\n  context:\n    cluster: "%s"\n    user: "%s"\n    namespace: "%s"\n' \
      "$name" "$name" "$user" "$namespace"
    printf 'current-context: "%s"\n' "$name"
  } >"$out"
) || die "could not create '$out'"
chmod 600 "$out"

# Check that the new credentials can list Longhorn volumes (warn only: the file stays).
# A server URL may have a path (Rancher-style proxies put the cluster there). Newer kubectl
# (1.37) puts it in front of a `get --raw` path itself; older ones (1.32) drop it, so for
# them the path is repeated in front of the API path.
rest=${server#*://}
prefix=""
if [[ $rest == */* ]]; then
  prefix="/${rest#*/}"
  prefix=${prefix%/}
fi
can_list() {
  "$kubectl_bin" --kubeconfig "$out" --request-timeout=15s get --raw \
    "$1/apis/longhorn.io/v1beta2/namespaces/$namespace/volumes?limit=1" >/dev/null 2>&1
}
if can_list "" || { [[ -n $prefix ]] && can_list "$prefix"; }; then
  printf 'wrote %s (context %s, server %s); it can list Longhorn volumes\n' "$out" "$context" "$server"
else
  printf 'wrote %s (context %s, server %s)\n' "$out" "$context" "$server"
  printf 'WARNING: listing Longhorn volumes with it failed; check with: fleet-exporter check --clusters %s\n' "$dir" >&2
fi
