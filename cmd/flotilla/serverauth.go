package main

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"io"
	"log/slog"
	"os"

	"flotilla/api/auth"
	"flotilla/cluster"
	"flotilla/internal/join"
)

// newServerAuth builds and starts the API's authentication, authorization
// and audit from the cluster's keys: the admin token, the ServiceAccount
// key, this master's store (RBAC objects, pods, ServiceAccounts).
func newServerAuth(ctx context.Context, node *cluster.Node, b *join.Bundle, saKey *ecdsa.PrivateKey, auditPath string, log *slog.Logger) (*auth.Auth, error) {
	var audit io.Writer
	if auditPath != "" {
		f, err := os.OpenFile(auditPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("--audit-log: %w", err)
		}
		// Closed with the process: the audit log is written until the end.
		audit = f
	}
	a, err := auth.New(auth.Config{
		Store:      node.Store(),
		AdminToken: b.AdminToken,
		VerifySA:   auth.VerifySAWith(&saKey.PublicKey),
		ReadIndex:  node.ReadIndex,
		AuditLog:   audit,
		Logger:     log.With("component", "auth"),
	})
	if err != nil {
		return nil, err
	}
	if err := a.Start(ctx); err != nil {
		return nil, err
	}
	return a, nil
}
