package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"flotilla/cluster"
)

// newGossipCommand is `flotilla operator gossip`: rotate the gossip
// encryption key and show which keys each member holds. It is registered
// under `operator` and uses its --kubeconfig, --server and --timeout.
func newGossipCommand(c *operatorClient) *cobra.Command {
	cmd := &cobra.Command{Use: "gossip", Short: "Gossip encryption keys"}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the gossip key with a new one, without cutting any live member off",
		Long: "Adds a new key everywhere, makes it primary once every live member has it, then removes the old ones.\n" +
			"Agents pick the keys up by polling the masters, so a rotation takes at least one poll interval.\n" +
			"Members that are down catch up when they come back.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res cluster.GossipRotateBody
			if err := c.do(cmd.Context(), http.MethodPost, "/flotilla/v1/operator/gossip/rotate", nil, nil, &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "gossip key rotated; keys now %s\n", strings.Join(res.Keys, ","))
			return nil
		},
	}
	var output string
	keys := &cobra.Command{
		Use:   "keys",
		Short: "List every member's gossip key fingerprints (primary first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var members []cluster.Member
			if err := c.do(cmd.Context(), http.MethodGet, "/flotilla/v1/operator/members", nil, nil, &members); err != nil {
				return err
			}
			return printMemberKeys(cmd.OutOrStdout(), members, output)
		},
	}
	keys.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(rotate, keys)
	return cmd
}

// memberKeys is one line of `gossip keys`.
type memberKeys struct {
	Name   string   `json:"name"`
	Role   string   `json:"role"`
	Status string   `json:"status"`
	Keys   []string `json:"keys"` // primary first
}

func printMemberKeys(w io.Writer, members []cluster.Member, output string) error {
	rows := make([]memberKeys, len(members))
	for i, m := range members {
		rows[i] = memberKeys{Name: m.Name, Role: m.Role, Status: m.Status, Keys: cluster.SplitFingerprints(m.Meta[cluster.MetaKeys])}
	}
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tSTATUS\tPRIMARY\tOTHER KEYS")
		for _, r := range rows {
			primary, others := "<none>", "-"
			if len(r.Keys) > 0 {
				primary = r.Keys[0]
			}
			if len(r.Keys) > 1 {
				others = strings.Join(r.Keys[1:], ",")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Role, r.Status, primary, others)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("-o %q: want table or json", output)
	}
}
