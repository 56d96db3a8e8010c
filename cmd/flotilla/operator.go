package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"flotilla/cluster"
)

// operatorClient talks to a server's operator endpoints on its API port,
// with the credentials of a kubeconfig (the operator endpoints are for
// admins).
type operatorClient struct {
	kubeconfig string
	server     string // host:port overriding the kubeconfig's server
	base       *url.URL
	http       *http.Client
}

// connect loads the kubeconfig and builds the HTTPS client.
func (c *operatorClient) connect(timeout time.Duration) error {
	cfg, err := kubeconfigREST(c.kubeconfig, "flotilla-operator")
	if err != nil {
		return err
	}
	if c.server != "" {
		if _, _, err := net.SplitHostPort(c.server); err != nil {
			return fmt.Errorf("--server %q: want host:port: %w", c.server, err)
		}
		cfg.Host = "https://" + c.server
		// The kubeconfig names one server; its CA is the cluster's, and
		// every server's certificate carries the in-cluster name.
		if cfg.TLSClientConfig.ServerName == "" {
			cfg.TLSClientConfig.ServerName = "kubernetes.default.svc"
		}
	}
	if c.base, err = url.Parse(cfg.Host); err != nil {
		return fmt.Errorf("kubeconfig server %q: %w", cfg.Host, err)
	}
	if c.http, err = rest.HTTPClientFor(cfg); err != nil {
		return err
	}
	c.http.Timeout = timeout
	return nil
}

func (c *operatorClient) url(path string, q url.Values) string {
	u := *c.base
	u.Path = path
	if q != nil {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// do sends one request and decodes a JSON answer into out (when non-nil). A
// non-2xx answer becomes an error carrying the server's message.
func (c *operatorClient) do(ctx context.Context, method, path string, q url.Values, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach server %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return responseError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func responseError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	// The cluster's endpoints answer {"error": ...}; the others (tokens,
	// keys, authorization) a Kubernetes Status.
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &e) == nil && (e.Error != "" || e.Message != "") {
		msg = e.Error + e.Message
	}
	return fmt.Errorf("server answered %s: %s", resp.Status, msg)
}

func newOperatorCommand() *cobra.Command {
	c := &operatorClient{}
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Operate the masters: Raft peers, snapshots, gossip keys, Secret encryption keys",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return c.connect(timeout)
		},
	}
	cmd.PersistentFlags().StringVar(&c.kubeconfig, "kubeconfig", "", "path to an admin kubeconfig (default: $KUBECONFIG, then "+strings.Join(defaultKubeconfigs, ", ")+", then ~/.kube/config)")
	cmd.PersistentFlags().StringVar(&c.server, "server", "", "a server's API address (host:port) to use instead of the kubeconfig's")
	cmd.PersistentFlags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: no limit)")
	cmd.AddCommand(newRaftCommand(c), newSnapshotCommand(c), newGossipCommand(c), newSecretsCommand(c))
	return cmd
}

func newRaftCommand(c *operatorClient) *cobra.Command {
	cmd := &cobra.Command{Use: "raft", Short: "Raft peers"}
	var output string
	list := &cobra.Command{
		Use:   "list-peers",
		Short: "List the Raft servers: id, address, state, voter, last index",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var peers []cluster.Peer
			if err := c.do(cmd.Context(), http.MethodGet, "/flotilla/v1/operator/raft/peers", nil, nil, &peers); err != nil {
				return err
			}
			return printPeers(cmd.OutOrStdout(), peers, output)
		},
	}
	list.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	remove := &cobra.Command{
		Use:   "remove-peer ID",
		Short: "Remove a server from the Raft configuration",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.do(cmd.Context(), http.MethodDelete, "/flotilla/v1/operator/raft/peers/"+url.PathEscape(args[0]), nil, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed peer %s\n", args[0])
			return nil
		},
	}
	transfer := &cobra.Command{
		Use:   "transfer-leader [ID]",
		Short: "Hand leadership to a server (any up-to-date one when ID is omitted)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			if len(args) == 1 {
				q.Set("id", args[0])
			}
			if err := c.do(cmd.Context(), http.MethodPost, "/flotilla/v1/operator/raft/transfer-leader", q, nil, nil); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "leadership transferred")
			return nil
		},
	}
	cmd.AddCommand(list, remove, transfer)
	return cmd
}

func printPeers(w io.Writer, peers []cluster.Peer, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(peers)
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tADDRESS\tSTATE\tVOTER\tLAST INDEX")
		for _, p := range peers {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%d\n", p.ID, p.Address, p.State, p.Voter, p.LastIndex)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("-o %q: want table or json", output)
	}
}

func newSnapshotCommand(c *operatorClient) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Save and restore the cluster state"}
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Save a snapshot of the cluster state to FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return saveSnapshot(cmd.Context(), c, args[0], cmd.OutOrStdout())
		},
	}
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the cluster state with the snapshot in FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("open snapshot: %w", err)
			}
			defer f.Close()
			if err := c.do(cmd.Context(), http.MethodPost, "/flotilla/v1/operator/snapshot", nil, f, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored snapshot %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(save, restore)
	return cmd
}

// saveSnapshot streams the snapshot into a temporary file next to path and
// renames it into place only when it is complete, so an interrupted save
// never leaves a truncated file under the asked name.
func saveSnapshot(ctx context.Context, c *operatorClient, path string, out io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/flotilla/v1/operator/snapshot", nil), nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach server %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return responseError(resp)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create snapshot file: %w", err)
	}
	n, err := io.Copy(tmp, resp.Body)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save snapshot %s: %w", path, err)
	}
	fmt.Fprintf(out, "saved snapshot %s (%d bytes)\n", path, n)
	return nil
}
