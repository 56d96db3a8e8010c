package api_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/api/apitest"
)

const kubectlTableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"

func getTable(t *testing.T, s *apitest.Server, path string) (*http.Response, *metav1.Table) {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+path, nil)
	req.Header.Set("Accept", kubectlTableAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tbl metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&tbl); err != nil {
		t.Fatal(err)
	}
	return resp, &tbl
}

func TestTableOutput(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	p := newPod("tbl", nil)
	p.Spec.NodeName = "n1"
	if _, err := s.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	resp, tbl := getTable(t, s, "/api/v1/namespaces/default/pods")
	if resp.Header.Get("Content-Type") != "application/json;as=Table;v=v1;g=meta.k8s.io" || tbl.Kind != "Table" {
		t.Fatalf("content type %q kind %q", resp.Header.Get("Content-Type"), tbl.Kind)
	}
	if len(tbl.ColumnDefinitions) != 9 || tbl.ColumnDefinitions[1].Name != "Ready" || len(tbl.Rows) != 1 || tbl.ResourceVersion == "" {
		t.Fatalf("pods table %+v", tbl)
	}
	cells := tbl.Rows[0].Cells
	if cells[0] != "tbl" || cells[1] != "0/1" || cells[2] != "Pending" || cells[6] != "n1" {
		t.Fatalf("cells %v", cells)
	}
	var meta metav1.PartialObjectMetadata
	if err := json.Unmarshal(tbl.Rows[0].Object.Raw, &meta); err != nil || meta.Name != "tbl" || meta.Namespace != "default" {
		t.Fatalf("row object %s", tbl.Rows[0].Object.Raw)
	}
	for path, want := range map[string]string{
		"/api/v1/namespaces/default/services/kubernetes": "10.96.0.1",
		"/api/v1/namespaces":                             "Active",
		"/api/v1/namespaces/default/pods/tbl":            "Pending",
	} {
		_, tbl := getTable(t, s, path)
		found := false
		for _, r := range tbl.Rows {
			for _, c := range r.Cells {
				if c == want {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("%s: no cell %q in %+v", path, want, tbl.Rows)
		}
	}
	// kubectl get -w: one-row tables, headers in the first only.
	req, _ := http.NewRequest("GET", s.URL+"/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1", nil)
	req.Header.Set("Accept", kubectlTableAccept)
	wr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Body.Close()
	line, _ := bufio.NewReader(wr.Body).ReadString('\n')
	var ev struct {
		Type   string
		Object metav1.Table
	}
	if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Type != "ADDED" || len(ev.Object.ColumnDefinitions) == 0 || len(ev.Object.Rows) != 1 {
		t.Fatalf("watch table event %v: %s", err, line)
	}
	if !strings.HasPrefix(wr.Header.Get("Content-Type"), "application/json;as=Table") {
		t.Fatalf("watch content type %q", wr.Header.Get("Content-Type"))
	}
}
