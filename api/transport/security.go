package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Security says how peers authenticate each other.
type Security struct {
	// CAFile, CertFile and KeyFile enable mutual TLS: each side presents its
	// certificate and requires the peer's to chain to CAFile. Required on
	// TCP unless Insecure; optional on vsock.
	CAFile   string `toml:"ca"`
	CertFile string `toml:"cert"`
	KeyFile  string `toml:"key"`
	// Insecure allows plain TCP without authentication. It is logged
	// loudly on every listen and dial.
	Insecure bool `toml:"insecure"`
	// AllowedCIDs lists the vsock peers a vsock listener accepts. A vsock
	// listener with an empty list refuses to start.
	AllowedCIDs []uint32 `toml:"allowed_cids"`
}

// Cert file names written by GenerateCerts and read by HostSecurity and
// DPUSecurity.
const (
	CAFileName      = "ca.pem"
	CAKeyFileName   = "ca-key.pem"
	HostCertName    = "host.pem"
	HostKeyName     = "host-key.pem"
	DPUCertFileName = "dpu.pem"
	DPUKeyFileName  = "dpu-key.pem"
)

// HostSecurity is the host (listening) side's mTLS settings for a
// directory written by GenerateCerts.
func HostSecurity(dir string) Security {
	return Security{
		CAFile:   filepath.Join(dir, CAFileName),
		CertFile: filepath.Join(dir, HostCertName),
		KeyFile:  filepath.Join(dir, HostKeyName),
	}
}

// DPUSecurity is the DPU (dialling) side's mTLS settings for a directory
// written by GenerateCerts.
func DPUSecurity(dir string) Security {
	return Security{
		CAFile:   filepath.Join(dir, CAFileName),
		CertFile: filepath.Join(dir, DPUCertFileName),
		KeyFile:  filepath.Join(dir, DPUKeyFileName),
	}
}

func (s Security) hasTLS() bool {
	return s.CAFile != "" || s.CertFile != "" || s.KeyFile != ""
}

func (s Security) load() (tls.Certificate, *x509.CertPool, error) {
	if s.CAFile == "" || s.CertFile == "" || s.KeyFile == "" {
		return tls.Certificate{}, nil, errors.New("mTLS needs all of ca, cert and key files")
	}
	cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load key pair %q/%q: %w", s.CertFile, s.KeyFile, err)
	}
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tls.Certificate{}, nil, fmt.Errorf("CA file %q holds no PEM certificate", s.CAFile)
	}
	return cert, pool, nil
}

// ServerTLS returns the listening side's TLS config: TLS 1.3, client
// certificate required and verified against the CA.
func (s Security) ServerTLS() (*tls.Config, error) {
	cert, pool, err := s.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// ClientTLS returns the dialling side's TLS config for serverName (the host
// part of the address; the host certificate carries it as a SAN).
func (s Security) ClientTLS(serverName string) (*tls.Config, error) {
	cert, pool, err := s.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}
