// Package pki is Flotilla's small certificate authority and token toolkit:
// the cluster CA, the certificates it issues to servers and agents, CSRs,
// the kubeadm-style CA hash, the mutual-TLS configs used between members,
// join and server tokens, and atomic file writes for key material.
//
// Decisions, and why:
//
//   - Every key is ECDSA P-256: small, fast handshakes, supported by every
//     Kubernetes client. Private keys are PEM "EC PRIVATE KEY" (SEC 1), what
//     client-go's keyutil and kubeadm write for EC keys.
//   - The CA decides what a certificate says. SignCSR takes only the public
//     key from a CSR (after checking the CSR's signature, which proves the
//     requester holds the private key); subject, SANs and usages come from the
//     Request the caller builds. A joiner cannot ask for system:masters.
//   - Identities are carried by the certificate: CN is the user name, O the
//     groups (as Kubernetes' x509 authenticator reads them). The constants
//     below are the only spellings used anywhere.
//   - MutualTLS does not check host names: members are dialled by the address
//     in the Raft configuration, which may be any of a server's addresses.
//     What makes a peer acceptable is a chain to the cluster CA plus the
//     required organisation (flotilla:servers), so an agent's certificate,
//     although signed by the same CA, is refused.
//   - Certificates are read through a Source on every handshake, so a
//     certificate installed after start (a server that joins later) or a
//     renewed one is used at once without restarting listeners.
//   - Join tokens have kubeadm's form <id>.<secret> ([a-z0-9]{6}.[a-z0-9]{16});
//     only HashSecret(secret) is ever stored. The shared server token is 64 hex
//     characters and so can never be mistaken for a join token.
//
// The package holds no state and does no network I/O.
package pki
