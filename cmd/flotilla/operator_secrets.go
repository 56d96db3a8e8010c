package main

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"flotilla/internal/seal"
)

// newSecretsCommand is `flotilla operator secrets`: the keys that encrypt
// Secrets at rest. It is registered under `operator` and uses its
// --kubeconfig, --server and --timeout (admin credentials: the rotation
// endpoint is for admins).
func newSecretsCommand(c *operatorClient) *cobra.Command {
	cmd := &cobra.Command{Use: "secrets", Short: "Encryption keys of Secrets at rest"}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Encrypt Secrets with a new key, keeping the old ones for reading",
		Long: "Makes a new key and hands it to every server, makes it the key that encrypts once every server has it,\n" +
			"then rewrites every Secret with it (each gets a new resourceVersion; its content is unchanged).\n" +
			"If a server cannot be reached the rotation stops before the new key encrypts anything: bring it back and run again.\n" +
			"Old keys stay on the servers so that snapshots and backups taken before the rotation remain readable.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res seal.RotateResult
			if err := c.do(cmd.Context(), http.MethodPost, seal.RotatePath, nil, nil, &res); err != nil {
				return fmt.Errorf("rotation failed: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "secrets key rotated: %s is now primary on %d servers (was %s); %d secrets re-encrypted\n",
				res.KeyID, len(res.Servers), res.Previous, res.Reencrypted)
			return nil
		},
	}
	cmd.AddCommand(rotate)
	return cmd
}
