package cluster

import (
	"testing"

	"github.com/hashicorp/memberlist"
)

func TestLeaveStatus(t *testing.T) {
	leaving, _ := EncodeMeta(map[string]string{MetaRole: RoleAgent, MetaLeaving: "1"})
	plain, _ := EncodeMeta(map[string]string{MetaRole: RoleAgent})
	for _, c := range []struct {
		name string
		node memberlist.Node
		want string
	}{
		// memberlist hands NotifyLeave a Node whose State is still the
		// old one: only the member's own announcement tells a leave.
		{"announced", memberlist.Node{Name: "a", Meta: leaving, State: memberlist.StateAlive}, StatusLeft},
		{"lost", memberlist.Node{Name: "b", Meta: plain, State: memberlist.StateAlive}, StatusDead},
		{"state says left", memberlist.Node{Name: "c", Meta: plain, State: memberlist.StateLeft}, StatusLeft},
		{"bad meta", memberlist.Node{Name: "d", Meta: []byte("{"), State: memberlist.StateSuspect}, StatusDead},
	} {
		if got := LeaveStatus(&c.node); got != c.want {
			t.Errorf("%s: LeaveStatus = %s, want %s", c.name, got, c.want)
		}
	}
}
