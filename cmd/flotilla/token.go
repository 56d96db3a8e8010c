package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"flotilla/internal/join"
)

// gossipPort is the default gossip port printed in join commands.
const gossipPort = "7946"

// newTokenCommand is `flotilla token`: join tokens for agents and servers,
// made, listed and revoked through a server's /flotilla/v1/tokens with the
// kubeconfig's (admin) credentials, as `kubeadm token` does.
func newTokenCommand() *cobra.Command {
	var kubeconfig string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke join tokens for agents and servers",
	}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "path to the kubeconfig (default: $KUBECONFIG, then "+strings.Join(defaultKubeconfigs, ", ")+", then ~/.kube/config)")
	cmd.AddCommand(newTokenCreateCommand(&kubeconfig), newTokenListCommand(&kubeconfig), newTokenRevokeCommand(&kubeconfig))
	return cmd
}

// tokensClient is a REST client for the kubeconfig's server with its
// credentials; requests use absolute paths.
func tokensClient(kubeconfig string) (rest.Interface, error) {
	cs, err := kubeconfigClient(kubeconfig, "flotilla-token")
	if err != nil {
		return nil, err
	}
	return cs.Discovery().RESTClient(), nil
}

func newTokenCreateCommand(kubeconfig *string) *cobra.Command {
	var (
		role, description string
		ttl               time.Duration
		printJoin         bool
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a join token; prints the token and the CA hash a joiner checks the cluster with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if role != join.RoleAgent && role != join.RoleServer {
				return fmt.Errorf("--role %q: want %s or %s", role, join.RoleAgent, join.RoleServer)
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %v: must be positive", ttl)
			}
			rc, err := tokensClient(*kubeconfig)
			if err != nil {
				return err
			}
			body, err := json.Marshal(join.CreateTokenRequest{Role: role, TTL: ttl.String(), Description: description})
			if err != nil {
				return err
			}
			raw, err := rc.Post().AbsPath(join.PathTokens).SetHeader("Content-Type", "application/json").
				Body(body).Do(cmd.Context()).Raw()
			if err != nil {
				return fmt.Errorf("create token: %w", err)
			}
			var resp join.CreateTokenResponse
			if err := json.Unmarshal(raw, &resp); err != nil {
				return fmt.Errorf("create token: %w", err)
			}
			out := cmd.OutOrStdout()
			if !printJoin {
				fmt.Fprintln(out, resp.Token)
				fmt.Fprintln(out, resp.CAHash)
				return nil
			}
			host := rc.Get().AbsPath("/").URL().Host
			h, _, err := net.SplitHostPort(host)
			if err != nil {
				h = host
			}
			gossip := net.JoinHostPort(h, gossipPort)
			if role == join.RoleServer {
				fmt.Fprintf(out, "flotilla server --join %s --token %s --ca-hash %s\n", gossip, resp.Token, resp.CAHash)
			} else {
				fmt.Fprintf(out, "flotilla agent --join %s --server %s --token %s --ca-hash %s\n", gossip, host, resp.Token, resp.CAHash)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", join.RoleAgent, "what the token may join: agent, or server (a server token also joins agents)")
	f.DurationVar(&ttl, "ttl", join.DefaultTokenTTL, "how long the token is valid")
	f.StringVar(&description, "description", "", "a note shown by 'flotilla token list'")
	f.BoolVar(&printJoin, "print-join-command", false, "print the full join command instead of the token and the CA hash")
	return cmd
}

func newTokenListCommand(kubeconfig *string) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the join tokens that have not expired (never their secrets)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := tokensClient(*kubeconfig)
			if err != nil {
				return err
			}
			raw, err := rc.Get().AbsPath(join.PathTokens).Do(cmd.Context()).Raw()
			if err != nil {
				return fmt.Errorf("list tokens: %w", err)
			}
			var list []join.TokenInfo
			if err := json.Unmarshal(raw, &list); err != nil {
				return fmt.Errorf("list tokens: %w", err)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tTTL\tEXPIRES\tDESCRIPTION")
			now := time.Now()
			for _, t := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Role, t.Expires.Sub(now).Round(time.Second),
					t.Expires.Local().Format(time.RFC3339), t.Description)
			}
			return tw.Flush()
		},
	}
}

func newTokenRevokeCommand(kubeconfig *string) *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ID|TOKEN",
		Aliases: []string{"delete"},
		Short:   "Revoke a join token: joins with it are refused at once on every server",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Accept the whole token too; only its id is sent.
			id, _, _ := strings.Cut(args[0], ".")
			rc, err := tokensClient(*kubeconfig)
			if err != nil {
				return err
			}
			if err := rc.Delete().AbsPath(join.PathTokens, id).Do(cmd.Context()).Error(); err != nil {
				return fmt.Errorf("revoke token %s: %w", id, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", id)
			return nil
		},
	}
}
