package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigFor builds an admin kubeconfig for the API at addr (host:port).
func kubeconfigFor(addr string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["flotilla"] = &clientcmdapi.Cluster{Server: "http://" + addr}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["flotilla"] = &clientcmdapi.Context{Cluster: "flotilla", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "flotilla"
	return cfg
}

// writeKubeconfig writes the admin kubeconfig into the data dir atomically,
// readable by its owner only (it will carry credentials).
func writeKubeconfig(dataDir, addr string) (string, error) {
	b, err := clientcmd.Write(*kubeconfigFor(addr))
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
	var server string
	cmd := &cobra.Command{
		Use:   "kubeconfig",
		Short: "Print an admin kubeconfig for a server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, _, err := net.SplitHostPort(server); err != nil {
				return fmt.Errorf("--server %q: want host:port: %w", server, err)
			}
			b, err := clientcmd.Write(*kubeconfigFor(server))
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	cmd.Flags().StringVar(&server, "server", "127.0.0.1:6443", "the server's API address (host:port)")
	return cmd
}
