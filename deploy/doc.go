// Package deploy holds mailgate's deployment material, not code:
//
//	compose/      docker compose: mailgate in front of a Dovecot backend (a demo)
//	systemd/      a hardened unit and a production configuration with ACME
//	kubernetes/   Deployment, Service, ConfigMap, PVC, PodDisruptionBudget (kustomize)
//	haproxy/      HAProxy in TCP mode sending PROXY protocol v2, and mailgate behind it
//
// Its tests exercise every file: each mailgate.yaml (the ConfigMap's
// included) must pass the same validation as `mailgate check-config`; ports,
// paths, probes and volumes must agree between a configuration and the
// manifests around it; the unit and haproxy.cfg go through systemd-analyze
// and haproxy -c where installed; and the Dockerfile's build command is run
// to prove it makes a static binary.
package deploy
