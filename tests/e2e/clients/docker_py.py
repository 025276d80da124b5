"""docker-py (PyPI `docker` 7.x) against Apex's docker.sock: containers, logs, execs,
images, networks and volumes. Run by tests/e2e/docker.rs with DOCKER_HOST set; prints
`ok` at the end, and fails with a traceback otherwise."""

import sys

import docker

IMAGE = "busybox:latest"

c = docker.from_env(timeout=300)
assert c.ping()
assert c.version()["ApiVersion"], c.version()

# Images: pull (a docker.io name, served by the mirror), tag, get, remove.
img = c.images.pull("busybox", tag="latest")
assert img.tag("pytag", "v1")
assert c.images.get("pytag:v1").id == img.id
c.images.remove("pytag:v1")
assert not c.images.list(name="pytag")

# A container's output and exit code.
out = c.containers.run(IMAGE, ["sh", "-c", "echo hi; echo err >&2"], remove=True)
assert out == b"hi\n", out
try:
    c.containers.run(IMAGE, ["sh", "-c", "exit 4"], remove=True)
    raise AssertionError("a failing container must raise ContainerError")
except docker.errors.ContainerError as e:
    assert e.exit_status == 4, e

# Networks and volumes, with a service reached by name.
net = c.networks.create("pynet", labels={"suite": "docker-py"})
vol = c.volumes.create("pyvol", labels={"suite": "docker-py"})
assert c.volumes.get("pyvol").attrs["Labels"] == {"suite": "docker-py"}
web = c.containers.run(
    IMAGE,
    ["sh", "-c", "mkdir -p /www; echo web-ok > /www/index.html; echo serving; exec httpd -f -p 80 -h /www"],
    detach=True,
    name="pyweb",
    network="pynet",
    volumes={"pyvol": {"bind": "/data", "mode": "rw"}},
)
# Logs stream until the line shows up.
for line in web.logs(stream=True, follow=True):
    if b"serving" in line:
        break
web.reload()
assert web.status == "running", web.status
assert "pynet" in web.attrs["NetworkSettings"]["Networks"], web.attrs["NetworkSettings"]

# Execs: output, exit code, environment, and a write to the volume.
r = web.exec_run(["sh", "-c", "echo data > /data/f; cat /data/f"])
assert (r.exit_code, r.output) == (0, b"data\n"), r
r = web.exec_run(["sh", "-c", "echo $GREETING; exit 3"], environment={"GREETING": "hello"})
assert (r.exit_code, r.output) == (3, b"hello\n"), r

client = c.containers.run(
    IMAGE,
    ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://pyweb/ && exit 0; sleep 1; done; exit 1"],
    detach=True,
    network="pynet",
)
assert client.wait(timeout=300)["StatusCode"] == 0
assert client.logs() == b"web-ok\n", client.logs()
client.remove()

# The volume outlives its container.
web.stop(timeout=1)
web.remove()
out = c.containers.run(IMAGE, ["cat", "/data/f"], volumes={"pyvol": {"bind": "/data"}}, remove=True)
assert out == b"data\n", out

net.remove()
vol.remove()
assert not [v for v in c.volumes.list() if v.name == "pyvol"]
assert not c.containers.list(all=True), c.containers.list(all=True)
print("ok")
sys.stdout.flush()
