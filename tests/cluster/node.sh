#!/usr/bin/env bash
# The node, run by up.sh as the first process of a new network, PID and mount namespace:
# sets up the namespace's network, starts every component in the background and waits.
# Anything that ends (or this script's death) ends the cluster. Fd 7 is the host's network
# namespace (for the veth's host end).
#
#   node.sh DIR APISERVER_BIN_DIR NODE_BIN_DIR CNI_BIN_DIR
set -euo pipefail

dir=$1 apiserver=$2 node=$3 cni_bin=$4
pki=$dir/pki
host_net=/proc/self/fd/7
log() { echo "node.sh: $*" >&2; }

# --- mounts: private to this namespace, gone with it ---
# containerd 1.6 keeps its shims' sockets and runc's state under /run/containerd, and the
# pods' network namespaces under /run/netns, whatever its root and state are.
mkdir -p /run/containerd /run/netns
mount -t tmpfs tmpfs /run/containerd
mount -t tmpfs tmpfs /run/netns

# --- network ---
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1
# The veth to the host; its host end goes back into the host's namespace.
ip link add snr-node type veth peer name snr-host
ip link set snr-host netns "$host_net"
ip addr add 198.18.255.2/30 dev snr-node
ip link set snr-node up
nsenter --net="$host_net" sh -ec '
    ip addr add 198.18.255.1/30 dev snr-host
    ip link set snr-host up
    ip route add 198.18.0.0/24 via 198.18.255.2
    ip route add 198.19.0.0/16 via 198.18.255.2
'
# Replies to the host go back through the veth; nothing else leaves the node.
ip route add 198.18.255.0/24 dev snr-node 2>/dev/null || true

# --- CNI: one bridge, no uplink ---
mkdir -p "$dir/cni/net.d" "$dir/cni/ipam"
cat >"$dir/cni/net.d/10-sniroute.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sniroute",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "snr0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "198.18.0.0/24", "gateway": "198.18.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

# --- containerd ---
mkdir -p "$dir/containerd"
cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  # Built locally and imported (tests/cluster/image.sh); no registry is reachable.
  sandbox_image = "sniroute.test/pause:1"
  # The machine's root lacks CAP_SYS_RESOURCE: never ask runc to lower a score below ours.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$dir/cni/net.d"
EOF

pids=()
run() { # NAME BINARY ARGS...
    local name=$1
    shift
    "$@" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    log "started $name (pid $!)"
}

run containerd containerd --config "$dir/containerd/config.toml"

# --- etcd and the API server ---
run etcd "$apiserver/etcd" --name=etcd --data-dir="$dir/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=etcd=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn

run kube-apiserver "$apiserver/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address=198.18.255.2 --secure-port=6443 \
    --cert-dir="$dir/apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=PodSecurity,NodeRestriction \
    --allow-privileged=true --service-cluster-ip-range=198.19.0.0/16 \
    --kubelet-preferred-address-types=InternalIP \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true

wait_https() { # URL KUBECONFIG
    local token
    token=$(sed -n 's/^ *token: //p' "$2")
    for _ in $(seq 600); do
        if curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" "$1" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    log "timed out waiting for $1"
    return 1
}
wait_https https://127.0.0.1:6443/readyz "$dir/kcm.kubeconfig"
log "kube-apiserver ready"

run kube-controller-manager "$node/kube-controller-manager" \
    --kubeconfig="$dir/kcm.kubeconfig" \
    --authentication-kubeconfig="$dir/kcm.kubeconfig" --authorization-kubeconfig="$dir/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-name=sniroute-test

run kube-scheduler "$node/kube-scheduler" \
    --kubeconfig="$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/scheduler.kubeconfig" --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false

# --- the kubelet ---
mkdir -p "$dir/kubelet" "$dir/pod-logs"
cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machine has cgroup v1 (hybrid); the kubelet drives cgroupfs itself.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
podLogsDir: $dir/pod-logs
# The API server reaches the kubelet (logs, exec) without a client certificate here.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
failSwapOn: false
# No cluster DNS: pods reach the API server by KUBERNETES_SERVICE_HOST, an IP.
resolvConf: ""
# A shared machine's disk and memory are not this node's to guard.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
run kubelet "$node/kubelet" --config="$dir/kubelet.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
    --root-dir="$dir/kubelet" --hostname-override=sniroute-node --node-ip=198.18.255.2

# --- kube-proxy ---
cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: sniroute-node
clusterCIDR: 198.18.0.0/16
clientConnection:
  kubeconfig: $dir/proxy.kubeconfig
# The namespace's conntrack table is the kernel's default: leave its sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
run kube-proxy "$node/kube-proxy" --config="$dir/kube-proxy.yaml"

# Anything that exits ends the cluster: a half cluster is worse than none.
set +e
wait -n "${pids[@]}"
status=$?
log "a component exited ($status); stopping the cluster"
exit 1
