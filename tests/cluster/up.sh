#!/usr/bin/env bash
# Starts a one-node Kubernetes cluster in DIR and runs it in the foreground until this
# process is killed (Ctrl-C, SIGTERM or SIGKILL: the whole cluster goes with it).
#
#   sudo tests/cluster/up.sh /tmp/c            # then: KUBECONFIG=/tmp/c/kubeconfig kubectl get pods -A
#
# What runs: etcd and kube-apiserver (../apiserver/build.sh), kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy (./build.sh), Debian's containerd + runc, and the CNI
# bridge, host-local, loopback and portmap plugins. Everything runs inside one new network,
# PID and mount namespace (unshare): when its first process dies the kernel kills every other
# one in it (containerd's shims and the pods' containers too), its mounts disappear, and so
# do its bridge, its iptables rules and the veth to the host. Nothing is left running.
#
# Addresses: the node is 198.18.255.2 on a veth whose host end is 198.18.255.1; pods get
# 198.18.0.0/24 on the bridge snr0 (no uplink); Services get 198.19.0.0/16. The host routes
# both through the veth, so the host reaches pods and ClusterIPs (kube-proxy's iptables rules
# in the node's namespace carry the ClusterIPs). The API server is https://198.18.255.2:6443.
#
# Needs root, Go 1.26+, containerd, runc, containernetworking-plugins, iptables and
# util-linux's unshare. One cluster per machine at a time (a lock; a second one waits).
# Logs are DIR/*.log; the node registers as sniroute-node.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:?usage: up.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

for tool in containerd runc unshare nsenter iptables openssl ip; do
    command -v "$tool" >/dev/null || {
        echo "up.sh: '$tool' is missing: apt-get install containerd runc containernetworking-plugins iptables openssl iproute2" >&2
        exit 127
    }
done
cni_bin=${SNIROUTE_CNI_BIN:-/usr/lib/cni}
for plugin in bridge host-local loopback portmap; do
    [[ -x $cni_bin/$plugin ]] || {
        echo "up.sh: no CNI plugin $cni_bin/$plugin: apt-get install containernetworking-plugins (or set SNIROUTE_CNI_BIN)" >&2
        exit 127
    }
done

# The veth's names and addresses are fixed, so one cluster per machine; the lock is held as
# long as this process (and the cluster) lives.
exec 8>/run/sniroute-cluster.lock
if ! flock -n 8; then
    echo "up.sh: another sniroute test cluster runs on this machine; waiting for it to end" >&2
    flock 8
fi
# For the tests' harness: from here on, starting is this cluster's own time.
touch "$dir/lock-held"

# A cluster that just ended may leave its veth behind for a while (the kernel frees a dead
# network namespace lazily, after its sockets' TIME_WAIT); under the lock no live cluster
# owns it, and deleting the host end deletes the pair and its routes.
ip link del snr-host 2>/dev/null || true

apiserver=$(bash "$here/../apiserver/build.sh")
node=$(bash "$here/build.sh")

mkdir -p "$dir/pki"
pki=$dir/pki
# --- PKI: a CA, the API server's serving certificate, the service-account signing key,
# and one static token per component (the RBAC bootstrap roles name these users) ---
if [[ ! -f $pki/ca.crt ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj /CN=sniroute-test-cluster-ca -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kube-apiserver \
        -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 30 -out "$pki/apiserver.crt" -extfile <(printf '%s\n' \
        "subjectAltName=IP:127.0.0.1,IP:198.18.255.2,IP:198.19.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
        "extendedKeyUsage=serverAuth") 2>/dev/null
    openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out "$pki/sa.key" 2>/dev/null
    openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    # The aggregation layer (metrics-server's metrics.k8s.io): the API server proxies to an
    # extension API server with this client certificate, which that server trusts through
    # the CA the API server publishes (kube-system/extension-apiserver-authentication).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj /CN=sniroute-test-front-proxy-ca -keyout "$pki/front-proxy-ca.key" -out "$pki/front-proxy-ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=front-proxy-client \
        -keyout "$pki/front-proxy-client.key" -out "$pki/front-proxy-client.csr" 2>/dev/null
    openssl x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" \
        -CAkey "$pki/front-proxy-ca.key" -CAcreateserial -days 30 -out "$pki/front-proxy-client.crt" \
        -extfile <(echo "extendedKeyUsage=clientAuth") 2>/dev/null
    token() { openssl rand -hex 16; }
    {
        echo "$(token),admin,admin,system:masters"
        echo "$(token),system:kube-controller-manager,kcm"
        echo "$(token),system:kube-scheduler,scheduler"
        echo "$(token),system:kube-proxy,kube-proxy"
        echo "$(token),system:node:sniroute-node,node,system:nodes"
    } >"$pki/tokens.csv"
fi

kubeconfig() { # NAME USER SERVER
    local tok
    tok=$(awk -F, -v u="$2" '$2 == u { print $1 }' "$pki/tokens.csv")
    cat >"$dir/$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sniroute-test
  cluster:
    server: $3
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    token: $tok
contexts:
- name: sniroute-test
  context: {cluster: sniroute-test, user: $2}
current-context: sniroute-test
EOF
}
# The person's (and the tests') kubeconfig reaches the API server from the host.
kubeconfig kubeconfig admin https://198.18.255.2:6443
kubeconfig kcm.kubeconfig system:kube-controller-manager https://127.0.0.1:6443
kubeconfig scheduler.kubeconfig system:kube-scheduler https://127.0.0.1:6443
kubeconfig proxy.kubeconfig system:kube-proxy https://127.0.0.1:6443
kubeconfig kubelet.kubeconfig system:node:sniroute-node https://127.0.0.1:6443

# The host's network namespace, for node.sh to put the veth's other end in.
exec 7</proc/self/ns/net
# --kill-child: if this process dies, the namespace's first process gets SIGKILL, and with
# it everything in the namespace.
exec unshare --net --pid --mount --fork --kill-child --mount-proc --propagation private \
    bash "$here/node.sh" "$dir" "$apiserver" "$node" "$cni_bin"
