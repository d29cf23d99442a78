"""status.py's one line about the Docker daemon: what answers, or why not and where its log is."""

from b2dkit import status


def test_a_reachable_daemon_is_its_version_address_and_counts():
    line = status.render_docker({"reachable": True, "host": "tcp://127.0.0.1:2376", "version": "20.10.24",
                                 "images": 3, "containers": 2, "running": 1, "log": "/var/log/docker.log"}, "dev")
    assert line == "20.10.24 on tcp://127.0.0.1:2376 (TLS): 3 images, 2 containers (1 running)"


def test_a_daemon_that_is_not_running_names_its_log_and_the_restart():
    line = status.render_docker({"reachable": False, "host": "tcp://127.0.0.1:2377", "error": "ConnectionError",
                                 "daemon": "not running", "log": "/var/log/docker.log"}, "dev")
    assert line.startswith("not reachable on tcp://127.0.0.1:2377 (ConnectionError): the daemon is not running")
    assert "(its log: /var/log/docker.log)" in line and "`b2dkit vm.docker --restart --name dev`" in line


def test_a_running_but_silent_daemon_says_so_without_the_restart_advice():
    line = status.render_docker({"reachable": False, "host": "tcp://127.0.0.1:2377", "error": "SSLError",
                                 "daemon": "running", "log": "/var/log/docker.log"}, "dev")
    assert line.endswith("(SSLError): the guest's dockerd is running (its log: /var/log/docker.log)")
