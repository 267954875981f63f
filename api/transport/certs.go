package transport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CertValidity is how long generated leaf certificates are valid.
const CertValidity = 825 * 24 * time.Hour

// GenerateCerts writes a fresh CA and a host (server) and DPU (client)
// certificate signed by it into dir: ca.pem, ca-key.pem, host.pem,
// host-key.pem, dpu.pem, dpu-key.pem. hostSANs are the IP addresses and DNS
// names the DPU will dial the host by. Keys are written 0600. Existing files
// are never overwritten: an error names the first one found.
func GenerateCerts(dir string, hostSANs []string) error {
	if len(hostSANs) == 0 {
		return fmt.Errorf("generate certs: at least one host name or IP is needed")
	}
	names := []string{CAFileName, CAKeyFileName, HostCertName, HostKeyName, DPUCertFileName, DPUKeyFileName}
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
			return fmt.Errorf("generate certs: %s already exists", filepath.Join(dir, n))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("generate certs: %w", err)
	}
	now := time.Now().Add(-5 * time.Minute)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "dpu-offload CA"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("generate certs: CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, CAFileName), "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, CAKeyFileName), caKey); err != nil {
		return err
	}

	host := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "offload-agent"},
		NotBefore:    now,
		NotAfter:     now.Add(CertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, san := range hostSANs {
		if ip := net.ParseIP(san); ip != nil {
			host.IPAddresses = append(host.IPAddresses, ip)
		} else {
			host.DNSNames = append(host.DNSNames, san)
		}
	}
	dpu := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "offload-dpu"},
		NotBefore:    now,
		NotAfter:     now.Add(CertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, leaf := range []struct {
		tmpl      *x509.Certificate
		cert, key string
	}{{host, HostCertName, HostKeyName}, {dpu, DPUCertFileName, DPUKeyFileName}} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificate(rand.Reader, leaf.tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("generate certs: %s: %w", leaf.cert, err)
		}
		if err := writePEM(filepath.Join(dir, leaf.cert), "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		if err := writeKey(filepath.Join(dir, leaf.key), key); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("generate certs: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		return fmt.Errorf("generate certs: write %s: %w", path, err)
	}
	return f.Close()
}
