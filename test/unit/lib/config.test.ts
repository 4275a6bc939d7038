import { kafkaConfigShape, kafkaTlsOf, loadConfig } from '../../../lib/config.ts';

const PEM = (label: string) => `-----BEGIN ${label}-----\nAAAA\n-----END ${label}-----\n`;
const load = (env: Record<string, string>) => loadConfig(kafkaConfigShape, { KAFKA_BROKERS: 'kafka:9093', ...env });

describe('Kafka connection settings', () => {
  it('defaults to ssl, which needs the client certificate and key', () => {
    const config = load({});
    expect(config.KAFKA_SECURITY_PROTOCOL).toBe('ssl');
    expect(() => kafkaTlsOf(config)).toThrow(/KAFKA_SSL_CERT, KAFKA_SSL_KEY: required with KAFKA_SECURITY_PROTOCOL=ssl.*KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE/);
  });

  it('gives the CA, certificate and key for ssl (no CA: the system CAs)', () => {
    expect(kafkaTlsOf(load({ KAFKA_SSL_CA: PEM('CERTIFICATE'), KAFKA_SSL_CERT: PEM('CERTIFICATE'), KAFKA_SSL_KEY: PEM('PRIVATE KEY') }))).toEqual({
      ca: PEM('CERTIFICATE').trim(),
      cert: PEM('CERTIFICATE').trim(),
      key: PEM('PRIVATE KEY').trim(),
    });
    expect(kafkaTlsOf(load({ KAFKA_SSL_CERT: PEM('CERTIFICATE'), KAFKA_SSL_KEY: PEM('PRIVATE KEY') }))?.ca).toBeUndefined();
  });

  it('refuses TLS material with plaintext (a half-applied configuration)', () => {
    expect(kafkaTlsOf(load({ KAFKA_SECURITY_PROTOCOL: 'plaintext' }))).toBeUndefined();
    expect(() => kafkaTlsOf(load({ KAFKA_SECURITY_PROTOCOL: 'plaintext', KAFKA_SSL_KEY: PEM('PRIVATE KEY') }))).toThrow(/plaintext, but KAFKA_SSL_KEY is set/);
  });

  it('names a value that is not PEM without echoing it, and an unknown protocol', () => {
    let message = '';
    try {
      load({ KAFKA_SSL_KEY: 'secret-not-pem', KAFKA_SECURITY_PROTOCOL: 'sasl' });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/KAFKA_SSL_KEY: expected the client's private key in PEM \(or set KAFKA_SSL_KEY_FILE/);
    expect(message).toMatch(/KAFKA_SECURITY_PROTOCOL: expected ssl .* or plaintext/);
    expect(message).not.toContain('secret-not-pem');
  });
});
