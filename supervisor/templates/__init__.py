"""What `catalyst-supervisor init` writes, shipped inside the package: the commented
configuration, the systemd units, the sysusers.d file and the env-file template. The
repository's config.yaml and deploy/ point here."""
