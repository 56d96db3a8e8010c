package hollow

import (
	"sync/atomic"

	"github.com/hashicorp/memberlist"

	"flotilla/cluster"
)

// delegate gives memberlist this node's metadata; the rest of
// memberlist.Delegate is unused (agents exchange nothing but metadata).
type delegate struct {
	meta atomic.Pointer[[]byte]
}

func (d *delegate) NodeMeta(limit int) []byte {
	p := d.meta.Load()
	if p == nil || len(*p) > limit {
		return nil
	}
	return *p
}

func (d *delegate) NotifyMsg([]byte)                {}
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *delegate) LocalState(bool) []byte          { return nil }
func (d *delegate) MergeRemoteState([]byte, bool)   {}

// setMeta encodes the agent metadata with the cluster ID, "" while unknown
// (servers accept a member without one).
func (d *delegate) setMeta(clusterID string) error {
	meta := map[string]string{cluster.MetaRole: cluster.RoleAgent}
	if clusterID != "" {
		meta[cluster.MetaClusterID] = clusterID
	}
	buf, err := cluster.EncodeMeta(meta)
	if err != nil {
		return err
	}
	d.meta.Store(&buf)
	return nil
}

// clusterIDOf returns the cluster ID a server member advertises, if any.
func clusterIDOf(members []*memberlist.Node) string {
	for _, m := range members {
		meta, err := cluster.DecodeMeta(m.Meta)
		if err != nil || meta[cluster.MetaRole] != cluster.RoleServer {
			continue
		}
		if id := meta[cluster.MetaClusterID]; id != "" {
			return id
		}
	}
	return ""
}
