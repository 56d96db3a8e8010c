package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"flotilla/internal/pki"
)

func TestServerToken(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	read := func(dir string) string {
		b, err := os.ReadFile(filepath.Join(dir, "token"))
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}

	// A bootstrapping server without --token makes one and keeps it.
	dir := t.TempDir()
	tok, err := serverToken(dir, "", true, false, log)
	if err != nil || tok == "" || read(dir) != tok {
		t.Fatalf("generated %q (stored %q), %v", tok, read(dir), err)
	}
	if _, _, err := pki.ParseJoinToken(tok); err == nil {
		t.Fatalf("a generated server token %q reads as a join token", tok)
	}
	if again, err := serverToken(dir, "", true, false, log); err != nil || again != tok {
		t.Fatalf("second start: %q, %v; want the stored %q", again, err, tok)
	}
	if st, err := os.Stat(filepath.Join(dir, "token")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v", st, err)
	}

	// --token wins and is stored.
	if got, err := serverToken(dir, "given", true, false, log); err != nil || got != "given" || read(dir) != "given" {
		t.Fatalf("--token given: %q (stored %q), %v", got, read(dir), err)
	}

	// A join token is used, never stored as the server token.
	dir = t.TempDir()
	id, secret := pki.NewJoinToken()
	if got, err := serverToken(dir, id+"."+secret, false, false, log); err != nil || got != id+"."+secret || read(dir) != "" {
		t.Fatalf("join token: %q (stored %q), %v", got, read(dir), err)
	}

	// A fresh server joining without a token cannot; a restarted one
	// with the cluster's keys needs none.
	if _, err := serverToken(t.TempDir(), "", false, false, log); err == nil || !strings.Contains(err.Error(), "--token is required") {
		t.Fatalf("joining without a token: %v", err)
	}
	if got, err := serverToken(t.TempDir(), "", false, true, log); err != nil || got != "" {
		t.Fatalf("restart with keys: %q, %v", got, err)
	}
}

func TestAPIAddrsFor(t *testing.T) {
	got := apiAddrsFor([]string{"10.0.0.1:7946", "[fd00::1]:7946", "host-only"}, 6443)
	want := []string{"10.0.0.1:6443", "[fd00::1]:6443", "host-only:6443"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestServerCertNames(t *testing.T) {
	n, err := serverCertNames("m1", "10.0.0.1", "192.0.2.7", []string{"api.example.com", "198.51.100.9", " "}, serviceIP)
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range n.ips {
		ips = append(ips, ip.String())
	}
	for _, want := range []string{"10.96.0.1", "10.0.0.1", "192.0.2.7", "198.51.100.9"} {
		if !slices.Contains(ips, want) {
			t.Errorf("IPs %v lack %s", ips, want)
		}
	}
	if !slices.Equal(n.dns, []string{"m1", "api.example.com"}) {
		t.Errorf("names %v", n.dns)
	}
}
