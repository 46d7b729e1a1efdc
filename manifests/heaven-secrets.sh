#!/usr/bin/env bash
# Makes the Secrets of heaven pods, which no controller generates any more:
#
#   <heaven>-heaven-pki         ca.crt, apiserver.crt, apiserver.key, sa.pub, sa.key
#   <heaven>-heaven-kubeconfig  kubeconfig: the controller's, for https://127.0.0.1:6443
#
# All heavens of a cluster share one CA and one service-account key pair (a
# token signed in one heaven is valid in every other, as in one cluster).
# They are made once in DIR and reused; ca.key never leaves DIR. DIR also
# gets admin.kubeconfig (group system:masters) for the user, pointing at
# https://127.0.0.1:6443 (e.g. `kubectl port-forward svc/kcm-heaven 6443`).
#
#   manifests/heaven-secrets.sh [--dir DIR] [--namespace NS] HEAVEN[=USER]... > secrets.yaml
#
# The controller of HEAVEN authenticates as USER (a client certificate with
# that common name; kube-apiserver's bootstrap RBAC knows
# system:kube-controller-manager and system:kube-scheduler), or, without
# USER, as <heaven>-controller in group system:masters.
set -o errexit -o pipefail -o nounset

DIR=./heaven-pki
NAMESPACE=""
HEAVENS=()
usage() {
	echo "usage: manifests/heaven-secrets.sh [--dir DIR] [--namespace NS] HEAVEN[=USER]..." >&2
	exit 2
}
while (($#)); do
	case $1 in
	--dir) (($# > 1)) || usage && DIR=$2 && shift 2 ;;
	--namespace) (($# > 1)) || usage && NAMESPACE=$2 && shift 2 ;;
	-h | --help) usage ;;
	-*) echo "heaven-secrets.sh: unknown flag $1" >&2 && usage ;;
	*) HEAVENS+=("$1") && shift ;;
	esac
done
((${#HEAVENS[@]})) || usage
command -v openssl >/dev/null || {
	echo "heaven-secrets.sh: openssl is needed" >&2
	exit 1
}
umask 077
mkdir -p "$DIR"

quiet() { "$@" >/dev/null 2>&1 || { "$@" >&2 && exit 1; }; }

# The cluster's CA and service-account key pair, once.
if [[ ! -s $DIR/ca.key ]]; then
	quiet openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/ca.key" -out "$DIR/ca.crt" -days 3650 \
		-subj /CN=trishanku-heavens-ca -addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign
fi
if [[ ! -s $DIR/sa.key ]]; then
	quiet openssl genrsa -out "$DIR/sa.key" 2048
	quiet openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub"
fi

# sign NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt signed by the CA.
sign() {
	local name=$1 subject=$2 ext=$3
	quiet openssl req -newkey rsa:2048 -nodes -keyout "$DIR/$name.key" -out "$DIR/$name.csr" -subj "$subject"
	printf '%s\n' "$ext" >"$DIR/$name.ext"
	quiet openssl x509 -req -in "$DIR/$name.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
		-out "$DIR/$name.crt" -days 825 -extfile "$DIR/$name.ext"
	rm -f "$DIR/$name.csr" "$DIR/$name.ext"
}

b64() { base64 -w0 <"$1"; }

# kubeconfig FILE CERT: a kubeconfig for https://127.0.0.1:6443 with CERT's
# client certificate and the CA, all embedded.
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: heaven
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(b64 "$DIR/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$DIR/$2.crt")
    client-key-data: $(b64 "$DIR/$2.key")
contexts:
- name: heaven
  context: {cluster: heaven, user: $2}
current-context: heaven
EOF
}

CLIENT='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'

if [[ ! -s $DIR/admin.kubeconfig ]]; then
	sign admin "/O=system:masters/CN=heaven-admin" "$CLIENT"
	kubeconfig "$DIR/admin.kubeconfig" admin
fi

# secret NAME KEY=FILE...: a Secret manifest with the files as data.
secret() {
	local name=$1 kv
	shift
	printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n' "$name"
	[[ -z $NAMESPACE ]] || printf '  namespace: %s\n' "$NAMESPACE"
	printf '  labels:\n    app.kubernetes.io/part-of: trishanku\ntype: Opaque\ndata:\n'
	for kv in "$@"; do
		printf '  %s: %s\n' "${kv%%=*}" "$(b64 "${kv#*=}")"
	done
}

for spec in "${HEAVENS[@]}"; do
	heaven=${spec%%=*}
	[[ $heaven =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || {
		echo "heaven-secrets.sh: '$heaven' is not a DNS label (lower case letters, digits, '-')" >&2
		exit 2
	}
	service=$heaven-heaven
	sans="DNS:localhost,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default"
	sans+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$service"
	if [[ -n $NAMESPACE ]]; then
		sans+=",DNS:$service.$NAMESPACE,DNS:$service.$NAMESPACE.svc,DNS:$service.$NAMESPACE.svc.cluster.local"
	fi
	sign "$heaven-apiserver" "/CN=$service" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans"
	if [[ $spec == *=* ]]; then
		sign "$heaven-controller" "/CN=${spec#*=}" "$CLIENT"
	else
		sign "$heaven-controller" "/O=system:masters/CN=$heaven-controller" "$CLIENT"
	fi
	kubeconfig "$DIR/$heaven-controller.kubeconfig" "$heaven-controller"
	secret "$service-pki" ca.crt="$DIR/ca.crt" apiserver.crt="$DIR/$heaven-apiserver.crt" \
		apiserver.key="$DIR/$heaven-apiserver.key" sa.pub="$DIR/sa.pub" sa.key="$DIR/sa.key"
	secret "$service-kubeconfig" kubeconfig="$DIR/$heaven-controller.kubeconfig"
done
