import { describeKubernetesFailure, kubernetesFailure } from '../../../lib/kubernetes-status.ts';

/** What @kubernetes/client-node 2.x throws for a status it has no case for: the Status JSON as text in `body`. */
function apiException(code: number, body: unknown): Error {
  return Object.assign(new Error(`HTTP-Code: ${code}\nMessage: Unknown API Status Code!\nBody: ${JSON.stringify(body)}\nHeaders: {}`), { code, body });
}

describe('kubernetesFailure', () => {
  it('reads the Status reason and message from the body, not the client message', () => {
    const status = { kind: 'Status', status: 'Failure', reason: 'Forbidden', code: 403, message: 'leases.coordination.k8s.io "x" is forbidden: User "u" cannot get resource "leases"' };
    const failure = kubernetesFailure(apiException(403, JSON.stringify(status)));
    expect(failure).toEqual({ httpStatus: 403, reason: 'Forbidden', message: status.message });
    expect(describeKubernetesFailure(failure)).toBe(`Forbidden: ${status.message}`);
  });

  it('a body already parsed, a body that is not JSON, no body (401), no answer', () => {
    expect(kubernetesFailure(apiException(409, { reason: 'Conflict', message: 'the object has been modified' }))).toMatchObject({ reason: 'Conflict', message: 'the object has been modified' });
    expect(kubernetesFailure(apiException(502, '<html>bad gateway</html>'))).toEqual({ httpStatus: 502, reason: undefined, message: '<html>bad gateway</html>' });
    expect(kubernetesFailure(Object.assign(new Error('HTTP-Code: 401\nMessage: Unauthorized\nBody: undefined'), { code: 401 }))).toEqual({ httpStatus: 401, reason: undefined, message: 'Unauthorized' });
    expect(kubernetesFailure(new TypeError('fetch failed'))).toEqual({ httpStatus: undefined, reason: undefined, message: 'fetch failed' });
  });

  it('does not repeat a reason the message already starts with, and keeps long messages whole up to 1,000 characters', () => {
    expect(describeKubernetesFailure({ httpStatus: 404, reason: 'NotFound', message: 'NotFound' })).toBe('NotFound');
    const long = 'x'.repeat(1_500);
    expect(kubernetesFailure(apiException(422, { reason: 'Invalid', message: long })).message).toHaveLength(1_000);
  });
});
