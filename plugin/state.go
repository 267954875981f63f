package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"

	runtimev1 "github.com/dpu-offload/offload/api/runtime/v1"
)

// persistedContainer is <state_dir>/<namespace>/<id>/state.json: what a
// restarted agent needs to list, inspect, kill and delete a container it
// did not create. (Exec processes and stdio are not re-adopted yet.)
type persistedContainer struct {
	Namespace string    `json:"namespace"`
	ID        string    `json:"id"`
	Bundle    string    `json:"bundle"`
	DPUBundle string    `json:"dpu_bundle,omitempty"`
	Pid       int       `json:"pid"`
	Terminal  bool      `json:"terminal,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *Service) stateFile(ns, id string) string {
	return filepath.Join(s.cfg.StateDir, ns, id, "state.json")
}

func (s *Service) saveState(c *container, stdio *runtimev1.StdioConfig) error {
	_, pid, _ := c.init.snapshot()
	st := persistedContainer{Namespace: c.ns, ID: c.id, Bundle: c.bundle, DPUBundle: c.dpuBundle, Pid: pid,
		Terminal: stdio.GetTerminal(), CreatedAt: time.Now().UTC()}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	f := s.stateFile(c.ns, c.id)
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
		return err
	}
	tmp := f + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f)
}

func (s *Service) removeState(ns, id string) {
	dir := filepath.Dir(s.stateFile(ns, id))
	if err := os.RemoveAll(dir); err != nil {
		log.L.WithError(err).Warnf("remove state of %s/%s", ns, id)
	}
	os.Remove(filepath.Dir(dir))
}

// adoptAll loads every persisted container. A live init is watched again
// (its exit status is unknown to us: it is no longer our child, so its
// TaskExit reports 255); a gone one is listed as stopped until deleted.
func (s *Service) adoptAll(ctx context.Context) error {
	files, err := filepath.Glob(filepath.Join(s.cfg.StateDir, "*", "*", "state.json"))
	if err != nil {
		return err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read %s: %w", f, err)
		}
		var st persistedContainer
		if err := json.Unmarshal(b, &st); err != nil {
			log.G(ctx).WithError(err).Errorf("skip corrupt state %s", f)
			continue
		}
		if validRef(&runtimev1.ProcessRef{Namespace: st.Namespace, ContainerId: st.ID}) != nil ||
			f != s.stateFile(st.Namespace, st.ID) {
			log.G(ctx).Errorf("skip state %s: names do not match its path", f)
			continue
		}
		s.adopt(ctx, &st)
	}
	return nil
}

func (s *Service) adopt(ctx context.Context, st *persistedContainer) {
	c := &container{s: s, ns: st.Namespace, id: st.ID, bundle: st.Bundle, rootfs: filepath.Join(st.Bundle, "rootfs"),
		dpuBundle: st.DPUBundle, runc: s.newRunc(st.Namespace, st.Bundle), execs: map[string]*process{}}
	// The pipes died with the old agent: an adopted init has no stdio.
	pio, _ := newProcessIO(&runtimev1.StdioConfig{})
	init := newProcess(c, "", pio)
	c.init = init
	s.containers[key(c.ns, c.id)] = c
	rs, err := c.runc.State(ctx, c.id)
	if err != nil || rs.Status == "stopped" || rs.Pid != st.Pid {
		init.pid = st.Pid
		init.setExited(exitInfo{Status: 255, ExitedAt: time.Now()})
		init.published = true
		close(init.publishedDone)
		log.G(ctx).Infof("adopted %s/%s: not running", c.ns, c.id)
		return
	}
	if cg, err := loadCgroup(st.Pid); err == nil {
		c.cg = cg
		c.oomReported, _ = cg.oomKills()
		if stop, err := cg.watchOOM(c.oomNotified); err == nil {
			c.stop = stop
		}
	}
	c.paused = runcStatus(rs.Status, runtimev1.Status_UNKNOWN) == runtimev1.Status_PAUSED
	if err := init.started(st.Pid, rs.Status != "created"); err != nil {
		log.G(ctx).WithError(err).Warnf("adopt %s/%s", c.ns, c.id)
	}
	log.G(ctx).Infof("adopted %s/%s pid %d (%s)", c.ns, c.id, st.Pid, rs.Status)
}
