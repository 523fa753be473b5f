"""A fake control-plane node for runtime-adapter tests: real processes behind stand-in runtimes.

Docker, containerd and systemd cannot run here, so tests meet the runtime adapters at the process
boundary instead. ``kubelet.py`` is a supervisor that runs the node's static pods as REAL
processes (Debian's etcd and the real kube-apiserver, kube-controller-manager and kube-scheduler
v1.20.2 of tests/kubebin.py, each with the manifest's flags), restarting them as the kubelet
does. ``bin/`` holds ``crictl``, ``docker``, ``systemctl`` and ``service`` executables that see
and act on those processes. ``fixture.py`` prepares a lab node and runs it for a test.

Modules: ``state`` (the shared state directory: containers.json, locks, process identity,
calls.log), ``units`` (systemd-like units), ``standins`` (the four CLIs), ``kubelet`` (the
supervisor), ``fixture`` (pytest helpers). All but ``fixture`` and ``kubelet`` use the standard
library only: the stand-ins run under whatever ``python3`` is on PATH.
"""
