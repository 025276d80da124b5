"""testcontainers-python (PyPI `testcontainers` 4.x) against Apex's docker.sock: a generic
container with an exposed port and an HTTP wait strategy, reached from here through
get_container_host_ip() and get_exposed_port(). Prints `ok` at the end."""

import urllib.request

from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HttpWaitStrategy

command = ["sh", "-c", "mkdir -p /www; echo tc-ok > /www/index.html; exec httpd -f -p 8080 -h /www"]
container = (
    DockerContainer("busybox:latest")
    .with_command(command)
    .with_exposed_ports(8080)
    .waiting_for(HttpWaitStrategy(8080).for_status_code(200).with_startup_timeout(240))
)
with container as c:
    host = c.get_container_host_ip()
    port = c.get_exposed_port(8080)
    body = urllib.request.urlopen(f"http://{host}:{port}/", timeout=30).read()
    assert body == b"tc-ok\n", body
    kernel = c.exec(["uname", "-r"]).output.decode().strip()
    print(f"kernel {kernel}")
print("ok")
