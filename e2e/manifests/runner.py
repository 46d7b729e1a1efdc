#!/usr/bin/env python3
"""A kubelet stand-in for the manifests scenario (e2e/manifests/run.sh).

It reads the Deployments of a namespace, their ConfigMaps and Secrets from a
real kube-apiserver, and runs one pod per Deployment as the kubelet would:
one network namespace per pod (a veth pair on a bridge; Services resolve to
their pod's address through the pod's /etc/hosts), volumes as directories
(emptyDir and PersistentVolumeClaim directories, Secrets written as the
kubelet writes them: a `..data` symlink, the mode and the fsGroup), each
container in its own mount and PID namespaces with its volumes bind-mounted
(and the rest read-only where readOnlyRootFilesystem says so), as its user
and groups with no capabilities and no new privileges, with the image's
and the pod's environment; init containers in order, each to completion;
then the containers, restarted when they exit; readiness and liveness probes
(httpGet, tcpSocket) from the host, as the kubelet probes.

Images cannot be had here, so IMAGES maps each to what runs instead: our
images to the binaries they are built from (their ENV, USER, ENTRYPOINT and
CMD read from their Dockerfiles), the others to the binaries of the e2e
build. It writes STATE (JSON, once a second) for the scenario to wait on, and
each container's output to <work>/<pod>/<container>.log. SIGTERM stops every
pod (SIGTERM, then SIGKILL after the grace period) and removes what it made.
"""

import argparse
import base64
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BRIDGE = "trishanku0"
SUBNET = "10.244.0"
# The containers' Python: Debian's, which any user can run (pyenv's lives in /root).
PYTHON = "/usr/bin/python3"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def images(release, kube, etcd):
    """Image name (no tag) -> what runs in its place."""
    return {
        "trishanku/trishanku": {
            "dockerfile": "images/trishanku/Dockerfile",
            "bin": {b: f"{release}/{b}" for b in ("gitcd", "gitcd-init", "git-pre", "git-post", "gitcd-pull")},
        },
        "trishanku/git-sync": {
            "dockerfile": "images/git-sync/Dockerfile",
            "bin": {"/git-sync": f"{release}/git-sync"},
        },
        "trishanku/git-server": {
            "dockerfile": "images/git-server/Dockerfile",
            "bin": {"git-http-server": [PYTHON, f"{ROOT}/e2e/support/git-http-server.py"]},
        },
        "registry.k8s.io/kube-apiserver": {"bin": {"kube-apiserver": f"{kube}/kube-apiserver"}},
        "registry.k8s.io/kube-controller-manager": {
            "bin": {"kube-controller-manager": f"{kube}/kube-controller-manager"}
        },
        "registry.k8s.io/kube-scheduler": {"bin": {"kube-scheduler": f"{kube}/kube-scheduler"}},
        "registry.k8s.io/etcd": {"bin": {"etcd": etcd}},
        # nginx is not installed here: Python's file server serves the same
        # directory, through the same link, on the same port.
        "nginxinc/nginx-unprivileged": {
            "entrypoint": [PYTHON, "-m", "http.server", "8080", "--directory", "/usr/share/nginx/html"],
            "user": "101",
        },
    }


def dockerfile(path):
    """ENV, USER, ENTRYPOINT, CMD and WORKDIR of one of our Dockerfiles."""
    out = {"env": {}}
    lines, cont = [], ""
    for raw in open(os.path.join(ROOT, path)):
        line = raw.rstrip("\n")
        if line.endswith("\\"):
            cont += line[:-1] + " "
            continue
        lines.append(cont + line)
        cont = ""
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                out["env"][k] = v
        elif word == "USER":
            out["user"] = rest
        elif word in ("ENTRYPOINT", "CMD"):
            out[word.lower()] = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif word == "WORKDIR":
            out["workdir"] = rest
    return out


def log(*args):
    print("[runner]", *args, file=sys.stderr, flush=True)


class Api:
    def __init__(self, kubectl, kubeconfig, namespace):
        self.base = [kubectl, f"--kubeconfig={kubeconfig}", "-n", namespace, "--request-timeout=20s"]

    def get(self, *what):
        out = subprocess.run(self.base + ["get", *what, "-o", "json"], check=True, capture_output=True, text=True)
        return json.loads(out.stdout)


def expand(text, env):
    """Kubernetes' $(VAR) expansion: $$ escapes, unknown names stay as written."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            end = text.index(")", i)
            name = text[i + 2 : end]
            out.append(env.get(name, text[i : end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class Container:
    def __init__(self, pod, spec, init):
        self.pod, self.spec, self.init = pod, spec, init
        self.name = spec["name"]
        self.proc = None
        self.restarts = 0
        self.ready = False
        self.exit_code = None
        self.done = False  # an init container that exited 0
        self.lock = threading.Lock()
        self.log = open(os.path.join(pod.dir, f"{self.name}.log"), "ab", buffering=0)

    # --- how it starts ---------------------------------------------------
    def argv_env(self):
        pod, spec = self.pod, self.spec
        image = pod.runner.image(spec["image"])
        env = {"PATH": f"{image['path']}:{SYSTEM_PATH}", "HOSTNAME": pod.name}
        env.update(image.get("env", {}))
        if pod.spec.get("enableServiceLinks", True):
            env.update(pod.runner.service_links())
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                env.update({prefix + k: v for k, v in pod.runner.configmap(source["configMapRef"]["name"]).items()})
            elif "secretRef" in source:
                env.update({prefix + k: v.decode() for k, v in pod.runner.secret(source["secretRef"]["name"]).items()})
        for var in spec.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "valueFrom" in var:
                env[var["name"]] = pod.value_from(var["valueFrom"])
            else:
                env[var["name"]] = ""
        if "command" in spec:
            argv = spec["command"] + spec.get("args", [])
        else:
            argv = image.get("entrypoint", []) + spec.get("args", image.get("cmd", []))
        if not argv:
            raise RuntimeError(f"{self.name}: neither the container nor image {spec['image']} has a command")
        argv = [expand(a, env) for a in argv]
        mapped = image["bin"].get(argv[0])
        if mapped is not None:
            argv = (mapped if isinstance(mapped, list) else [mapped]) + argv[1:]
        return argv, env

    def identity(self):
        pod_ctx = self.pod.spec.get("securityContext", {})
        ctx = {**pod_ctx, **self.spec.get("securityContext", {})}
        image = self.pod.runner.image(self.spec["image"])
        user, _, group = str(image.get("user", "0")).partition(":")
        uid = int(ctx.get("runAsUser", user))
        gid = int(ctx.get("runAsGroup", group or 0))
        if ctx.get("runAsNonRoot") and uid == 0:
            raise RuntimeError(f"{self.name}: container has runAsNonRoot and image will run as root")
        if ctx.get("privileged") or ctx.get("allowPrivilegeEscalation", True) is not False:
            raise RuntimeError(f"{self.name}: the runner only runs containers without privilege escalation")
        groups = [gid]
        if "fsGroup" in pod_ctx:
            groups.append(int(pod_ctx["fsGroup"]))
        groups += [int(g) for g in pod_ctx.get("supplementalGroups", [])]
        return uid, gid, sorted(set(groups))

    def script(self, argv):
        """The shell that makes the container's mount namespace, then becomes it."""
        uid, gid, groups = self.identity()
        lines = ["set -e"]
        for mount in sorted(self.spec.get("volumeMounts", []), key=lambda m: m["mountPath"].count("/")):
            source = self.pod.volumes[mount["name"]]
            if "subPath" in mount:
                source = os.path.join(source, mount["subPath"])
                os.makedirs(source, exist_ok=True)
            target = mount["mountPath"]
            if os.path.commonpath([target, self.pod.runner.work]) == target.rstrip("/"):
                raise RuntimeError(f"{self.name}: a volume at {target} would hide the runner's {self.pod.runner.work}")
            self.pod.runner.note_mountpoint(target)
            lines.append(f"mkdir -p {shlex.quote(target)}")
            lines.append(f"mount --bind {shlex.quote(source)} {shlex.quote(target)}")
            if mount.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
        if self.spec.get("securityContext", {}).get("readOnlyRootFilesystem"):
            # The root mount of this mount namespace only; the volumes stay as mounted.
            lines.append("mount -o remount,bind,ro /")
        workdir = self.spec.get("workingDir", self.pod.runner.image(self.spec["image"]).get("workdir", "/"))
        lines.append(f"cd {shlex.quote(workdir)}")
        setpriv = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            f"--groups={','.join(map(str, groups))}",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
        lines.append("exec " + shlex.join(setpriv + argv))
        return "\n".join(lines)

    def start(self):
        argv, env = self.argv_env()
        script = self.script(argv)
        self.log.write(f"==== {time.strftime('%H:%M:%S')} start #{self.restarts}: {shlex.join(argv)}\n".encode())
        self.proc = subprocess.Popen(
            # A PID namespace too: whatever the container starts (git's
            # credential-cache daemon, say) ends with it, as in a container.
            ["ip", "netns", "exec", self.pod.netns, "unshare", "--mount", "--propagation", "private",
             "--pid", "--fork", "--mount-proc", "sh", "-c", script],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def wait(self):
        code = self.proc.wait()
        self.exit_code = code
        self.ready = False
        self.log.write(f"==== {time.strftime('%H:%M:%S')} exited with {code}\n".encode())
        return code

    def stop(self, grace):
        """SIGTERM to the container's first process, SIGKILL after the grace period.

        unshare --fork ignores SIGTERM and waits for its child, the PID
        namespace's init; as in a container, that process gets SIGTERM only
        if it handles it, and when it ends, so does everything it started.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    # --- probes ------------------------------------------------------------
    def port(self, port):
        if isinstance(port, int):
            return port
        for p in self.spec.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        raise RuntimeError(f"{self.name}: no port named {port}")

    def probe(self, probe):
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                host, port = get.get("host", self.pod.ip), self.port(get["port"])
                if get.get("scheme", "HTTP") == "HTTPS":
                    ctx = ssl.create_default_context()
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                conn.request("GET", get.get("path", "/"), headers=headers)
                status = conn.getresponse().status
                conn.close()
                return 200 <= status < 400
            if "tcpSocket" in probe:
                with socket.create_connection((self.pod.ip, self.port(probe["tcpSocket"]["port"])), timeout=timeout):
                    return True
        except (OSError, http.client.HTTPException):
            return False
        raise RuntimeError(f"{self.name}: the runner probes with httpGet and tcpSocket only")

    def probing(self, stopping):
        """Readiness and liveness of the running process, until it exits."""
        readiness, liveness = self.spec.get("readinessProbe"), self.spec.get("livenessProbe")
        started, proc = time.monotonic(), self.proc
        failures = {"readiness": 0, "liveness": 0}
        next_at = {"readiness": 0.0, "liveness": 0.0}
        if readiness is None:
            self.ready = True
        while proc.poll() is None and not stopping.is_set():
            now = time.monotonic() - started
            for kind, probe in (("readiness", readiness), ("liveness", liveness)):
                if probe is None or now < probe.get("initialDelaySeconds", 0) or now < next_at[kind]:
                    continue
                next_at[kind] = now + probe.get("periodSeconds", 10)
                ok = self.probe(probe)
                failures[kind] = 0 if ok else failures[kind] + 1
                if kind == "readiness":
                    if ok:
                        self.ready = True
                    elif failures[kind] >= probe.get("failureThreshold", 3):
                        self.ready = False
                elif failures[kind] >= probe.get("failureThreshold", 3):
                    self.log.write(f"==== liveness failed {failures[kind]} times: restarting\n".encode())
                    threading.Thread(target=self.stop, args=(self.pod.grace,), daemon=True).start()
                    failures[kind] = 0
            stopping.wait(0.25)

    def state(self):
        running = self.proc is not None and self.proc.poll() is None
        return {"running": running, "ready": self.ready and running, "restarts": self.restarts,
                "exitCode": self.exit_code, "done": self.done}


class Pod:
    def __init__(self, runner, name, deployment, index):
        self.runner, self.name = runner, name
        self.deployment = deployment
        template = deployment["spec"]["template"]
        self.spec, self.labels = template["spec"], template["metadata"].get("labels", {})
        self.ip = f"{SUBNET}.{10 + index}"
        self.netns = f"trishanku-{index}"
        self.dir = os.path.join(runner.work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.grace = min(self.spec.get("terminationGracePeriodSeconds", 30), 10)
        self.volumes = {}
        self.phase = "Pending"
        self.init = [Container(self, c, True) for c in self.spec.get("initContainers", [])]
        self.containers = [Container(self, c, False) for c in self.spec["containers"]]

    def value_from(self, source):
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            values = {"metadata.name": self.name, "metadata.namespace": self.runner.namespace,
                      "status.podIP": self.ip, "spec.nodeName": socket.gethostname(), "status.hostIP": f"{SUBNET}.1"}
            if path not in values:
                raise RuntimeError(f"{self.name}: fieldRef {path} is not known to the runner")
            return values[path]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self.runner.configmap(ref["name"])[ref["key"]]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self.runner.secret(ref["name"])[ref["key"]].decode()
        raise RuntimeError(f"{self.name}: valueFrom {sorted(source)} is not known to the runner")

    def network(self):
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        veth = f"veth-tk{self.netns.rsplit('-', 1)[1]}"
        sh(f"ip link add {veth} type veth peer name eth0 netns {self.netns}",
           f"ip link set {veth} master {BRIDGE} up",
           f"ip -n {self.netns} addr add {self.ip}/24 dev eth0",
           f"ip -n {self.netns} link set eth0 up",
           f"ip -n {self.netns} link set lo up",
           f"ip -n {self.netns} route add default via {SUBNET}.1")
        etc = f"/etc/netns/{self.netns}"
        os.makedirs(etc, exist_ok=True)
        with open(f"{etc}/hosts", "w") as f:
            f.write(f"127.0.0.1 localhost\n::1 localhost\n{self.ip} {self.name}\n")
            for line in self.runner.hosts():
                f.write(line + "\n")

    def make_volumes(self):
        fs_group = self.spec.get("securityContext", {}).get("fsGroup")
        for volume in self.spec.get("volumes", []):
            name = volume["name"]
            if "emptyDir" in volume:
                path = os.path.join(self.dir, "volumes", name)
                self.runner.directory(path, fs_group)
            elif "persistentVolumeClaim" in volume:
                path = os.path.join(self.runner.work, "pvc", volume["persistentVolumeClaim"]["claimName"])
                self.runner.directory(path, fs_group)
            elif "secret" in volume:
                path = os.path.join(self.dir, "volumes", name)
                data = self.runner.secret(volume["secret"]["secretName"])
                atomic_files(path, data, volume["secret"].get("defaultMode", 0o644), fs_group)
            elif "configMap" in volume:
                path = os.path.join(self.dir, "volumes", name)
                data = {k: v.encode() for k, v in self.runner.configmap(volume["configMap"]["name"]).items()}
                atomic_files(path, data, volume["configMap"].get("defaultMode", 0o644), fs_group)
            else:
                raise RuntimeError(f"{self.name}: volume {name}: the runner has emptyDir, PVC, secret, configMap")
            self.volumes[name] = path

    def run(self, stopping):
        """The pod's life: network and volumes, init containers, containers."""
        try:
            self.network()
            self.make_volumes()
            for c in self.init:
                self.phase = f"Init:{c.name}"
                backoff = 1
                while not stopping.is_set():
                    c.start()
                    if c.wait() == 0:
                        c.done = True
                        break
                    c.restarts += 1
                    stopping.wait(backoff)
                    backoff = min(backoff * 2, 16)
                if stopping.is_set():
                    return
            self.phase = "Running"
            threads = [threading.Thread(target=self.keep, args=(c, stopping), daemon=True) for c in self.containers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except Exception as e:  # the pod fails visibly, the runner goes on
            self.phase = f"Failed: {e}"
            log(f"pod {self.name}: {e}")

    def keep(self, c, stopping):
        """restartPolicy Always: start, probe, and restart with a backoff."""
        backoff = 1
        while not stopping.is_set():
            started = time.monotonic()
            c.start()
            c.probing(stopping)
            c.wait()
            if stopping.is_set():
                return
            c.restarts += 1
            if time.monotonic() - started > 30:
                backoff = 1
            stopping.wait(backoff)
            backoff = min(backoff * 2, 16)

    def stop(self):
        for c in self.containers + self.init:
            c.stop(self.grace)

    def state(self):
        return {"ip": self.ip, "phase": self.phase, "deployment": self.deployment["metadata"]["name"],
                "ready": self.phase == "Running" and all(c.state()["ready"] for c in self.containers),
                "initContainers": {c.name: c.state() for c in self.init},
                "containers": {c.name: c.state() for c in self.containers}}


def atomic_files(path, data, mode, fs_group):
    """A Secret or ConfigMap volume as the kubelet writes it: KEY -> ..data/KEY."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o755)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + str(os.getpid())
    os.makedirs(os.path.join(path, stamp))
    if fs_group is not None:
        mode |= 0o040
    for key, value in data.items():
        file = os.path.join(path, stamp, key)
        with open(file, "wb") as f:
            f.write(value)
        os.chown(file, 0, fs_group if fs_group is not None else 0)
        os.chmod(file, mode)
        if not os.path.lexists(os.path.join(path, key)):
            os.symlink(os.path.join("..data", key), os.path.join(path, key))
    tmp = os.path.join(path, "..data_tmp")
    os.symlink(stamp, tmp)
    os.rename(tmp, os.path.join(path, "..data"))


def sh(*commands):
    for command in commands:
        subprocess.run(command.split(), check=True)


class Runner:
    def __init__(self, args):
        self.work, self.namespace = args.work, args.namespace
        self.api = Api(args.kubectl, args.kubeconfig, args.namespace)
        self.state_file = args.state
        self.images = images(args.release, args.kube, args.etcd)
        self.created_mountpoints = []
        self.pods = []
        self._services = None
        self._cache = {}

    def image(self, ref):
        name = ref.rsplit("@", 1)[0]
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        if name in self._cache:
            return self._cache[name]
        if name not in self.images:
            raise RuntimeError(f"image {ref}: not in the runner's table (e2e/manifests/runner.py)")
        entry = dict(self.images[name])
        if "dockerfile" in entry:
            entry.update(dockerfile(entry["dockerfile"]))
        # The image's files are copied into the work directory: where they
        # were built (a checkout under /tmp, say) a pod's volume may hide them.
        path = os.path.join(self.work, "images", name.replace("/", "_"))
        os.makedirs(path, exist_ok=True)
        binaries = {}
        for b, host in entry.get("bin", {}).items():
            argv = host if isinstance(host, list) else [host]
            copy = os.path.join(path, os.path.basename(argv[-1]))
            if not os.path.exists(copy):
                try:
                    os.link(argv[-1], copy)
                except OSError:
                    shutil.copy2(argv[-1], copy)
            binaries[b] = argv[:-1] + [copy]
        entry["bin"] = binaries
        entry["path"] = path
        self._cache[name] = entry
        return entry

    def configmap(self, name):
        return self.api.get("configmap", name).get("data", {})

    def secret(self, name):
        return {k: base64.b64decode(v) for k, v in self.api.get("secret", name).get("data", {}).items()}

    def services(self):
        """Each Service: its name and the pod it selects (the runner has no proxy: port == targetPort)."""
        if self._services is None:
            self._services = []
            for svc in self.api.get("services")["items"]:
                selector = svc["spec"].get("selector", {})
                pods = [p for p in self.pods if selector and all(p.labels.get(k) == v for k, v in selector.items())]
                if not pods:
                    continue
                for port in svc["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    resolved = target
                    if isinstance(target, str):
                        resolved = next((p["containerPort"] for c in pods[0].spec["containers"]
                                         for p in c.get("ports", []) if p.get("name") == target), None)
                    if resolved != port["port"]:
                        raise RuntimeError(f"Service {svc['metadata']['name']}: port {port['port']} goes to "
                                           f"{target}; the runner has no proxy, so they must be equal")
                self._services.append((svc["metadata"]["name"], pods[0].ip, svc["spec"]["ports"][0]["port"]))
        return self._services

    def hosts(self):
        ns = self.namespace
        return [f"{ip} {n} {n}.{ns} {n}.{ns}.svc {n}.{ns}.svc.cluster.local" for n, ip, _ in self.services()]

    def service_links(self):
        env = {}
        for name, ip, port in self.services():
            key = name.upper().replace("-", "_")
            env[f"{key}_SERVICE_HOST"], env[f"{key}_SERVICE_PORT"] = ip, str(port)
        return env

    def directory(self, path, fs_group):
        os.makedirs(path, exist_ok=True)
        if fs_group is not None:
            os.chown(path, 0, fs_group)
            os.chmod(path, 0o2777)
        else:
            os.chmod(path, 0o777)

    def note_mountpoint(self, target):
        """Remembers the outermost directory a mount point adds to the host, to remove it at the end."""
        missing = None
        path = target
        while path != "/" and not os.path.exists(path):
            missing, path = path, os.path.dirname(path)
        if missing and missing not in self.created_mountpoints:
            self.created_mountpoints.append(missing)

    def plan(self):
        deployments = self.api.get("deployments")["items"]
        rs = self.api.get("replicasets")["items"]
        for i, d in enumerate(sorted(deployments, key=lambda d: d["metadata"]["name"])):
            owned = [r for r in rs if any(o.get("uid") == d["metadata"]["uid"]
                                          for o in r["metadata"].get("ownerReferences", []))]
            suffix = owned[0]["metadata"]["labels"].get("pod-template-hash", "runner") if owned else "runner"
            self.pods.append(Pod(self, f"{d['metadata']['name']}-{suffix}-0", d, i))

    def write_state(self):
        state = {"pods": {p.name: p.state() for p in self.pods}}
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self.state_file)

    def cleanup(self):
        for p in self.pods:
            p.stop()
        for p in self.pods:
            subprocess.run(["ip", "netns", "del", p.netns], capture_output=True)
            subprocess.run(["rm", "-rf", f"/etc/netns/{p.netns}"], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        for top in reversed(self.created_mountpoints):  # the directories it made, if still empty
            for path, _, _ in os.walk(top, topdown=False):
                try:
                    os.rmdir(path)
                except OSError:
                    pass

    def run(self):
        # What a runner that was killed may have left.
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines():
            name = line.split(": ")[1].split("@")[0]
            if name == BRIDGE or name.startswith("veth-tk"):
                subprocess.run(["ip", "link", "del", name], capture_output=True)
        for name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
            if name.startswith("trishanku-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        sh(f"ip link add {BRIDGE} type bridge", f"ip addr add {SUBNET}.1/24 dev {BRIDGE}", f"ip link set {BRIDGE} up")
        self.plan()
        for p in self.pods:  # every image must be known before anything starts
            for c in p.init + p.containers:
                self.image(c.spec["image"])
        self.services()
        log("pods:", ", ".join(f"{p.name} ({p.ip})" for p in self.pods))
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        threads = [threading.Thread(target=p.run, args=(stopping,), daemon=True) for p in self.pods]
        try:
            for t in threads:
                t.start()
            while not stopping.is_set():
                self.write_state()
                stopping.wait(1)
        finally:
            stopping.set()
            self.cleanup()
            self.write_state()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--namespace", required=True)
    p.add_argument("--work", required=True, help="a directory for the pods' volumes and logs")
    p.add_argument("--state", required=True, help="where the pods' state is written, as JSON")
    p.add_argument("--release", required=True, help="our release binaries")
    p.add_argument("--kube", required=True, help="the Kubernetes binaries of the e2e build")
    p.add_argument("--etcd", default="/usr/bin/etcd")
    Runner(p.parse_args()).run()


if __name__ == "__main__":
    main()
