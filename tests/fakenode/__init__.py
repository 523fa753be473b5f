"""A fake control-plane node for runtime-adapter tests: real processes behind stand-in runtimes.

Docker, containerd and systemd cannot run here, so tests meet the runtime adapters at the process
boundary instead. ``kubelet.py`` is a supervisor that runs the node's static pods as REAL
processes (Debian's etcd with the manifest's TLS flags, an HTTPS kube-apiserver stand-in that
talks to that etcd, controller-manager and scheduler health servers), restarting them as the
kubelet does. ``bin/`` holds ``crictl``, ``docker``, ``systemctl`` and ``service`` executables
that see and act on those processes. ``fixture.py`` prepares a lab node and runs it for a test.

Modules: ``state`` (the shared state directory: containers.json, locks, process identity,
calls.log), ``units`` (systemd-like units), ``standins`` (the four CLIs), ``kubelet`` (the
supervisor), ``apiserver`` (the component servers), ``fixture`` (pytest helpers). All but
``fixture`` and the component servers use the standard library only: the stand-ins run under
whatever ``python3`` is on PATH.
"""
