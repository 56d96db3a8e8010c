package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigFor builds an admin kubeconfig for the API at addr (host:port):
// HTTPS verified against the cluster CA, the admin bearer token.
func kubeconfigFor(addr string, caPEM []byte, adminToken string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["flotilla"] = &clientcmdapi.Cluster{Server: "https://" + addr, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: adminToken}
	cfg.Contexts["flotilla"] = &clientcmdapi.Context{Cluster: "flotilla", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "flotilla"
	return cfg
}

// writeKubeconfig writes the admin kubeconfig into the data dir atomically,
// readable by its owner only: it carries the admin token.
func writeKubeconfig(dataDir, addr string, caPEM []byte, adminToken string) (string, error) {
	b, err := clientcmd.Write(*kubeconfigFor(addr, caPEM, adminToken))
	if err != nil {
		return "", err
	}
	path := filepath.Join(dataDir, "kubeconfig")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return "", fmt.Errorf("write kubeconfig %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return path, nil
}

func newKubeconfigCommand() *cobra.Command {
	var server, dataDir string
	cmd := &cobra.Command{
		Use:   "kubeconfig",
		Short: "Print an admin kubeconfig for a server (run where the server's data dir is)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, _, err := net.SplitHostPort(server); err != nil {
				return fmt.Errorf("--server %q: want host:port: %w", server, err)
			}
			ca, err := readPEM(dataDir, "ca.crt")
			if err != nil {
				return fmt.Errorf("the cluster CA (is %s a server's data dir?): %w", dataDir, err)
			}
			tok, err := os.ReadFile(filepath.Join(dataDir, "tls", "admin.token"))
			if err != nil {
				return fmt.Errorf("the admin token: %w", err)
			}
			b, err := clientcmd.Write(*kubeconfigFor(server, ca, strings.TrimSpace(string(tok))))
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	cmd.Flags().StringVar(&server, "server", "127.0.0.1:6443", "the server's API address (host:port)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "/var/lib/flotilla", "the server's data dir (holds the CA and the admin token)")
	return cmd
}
