// Java 17 JCA/JCE through the SunPKCS11 provider loading FerroHSM: signatures, ciphers, MACs,
// random and key agreement, each checked against the JDK's software providers (SunRsaSign,
// SunEC, SunJCE); signatures and public keys are also written to a directory so that the Rust
// test verifies them again with plain openssl.
//
// Usage: java FerroJce <sunpkcs11.cfg> <output dir> <user PIN> <token AES key label>

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.MGF1ParameterSpec;
import java.security.spec.PSSParameterSpec;
import java.util.Arrays;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.KeyAgreement;
import javax.crypto.KeyGenerator;
import javax.crypto.Mac;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.IvParameterSpec;
import javax.crypto.spec.OAEPParameterSpec;
import javax.crypto.spec.PSource;
import javax.crypto.spec.SecretKeySpec;

public class FerroJce {
    static Provider p;
    static Path out;
    static int passed = 0;

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError("FAILED: " + what);
        }
        passed++;
        System.out.println("ok " + what);
    }

    static boolean inToken(Object key) {
        // SunPKCS11 keys are sun.security.pkcs11.P11Key subclasses.
        return key.getClass().getName().startsWith("sun.security.pkcs11.P11Key");
    }

    static KeyPair pair(String alg, Object param) throws Exception {
        KeyPairGenerator g = KeyPairGenerator.getInstance(alg, p);
        if (param instanceof Integer) {
            g.initialize((Integer) param);
        } else {
            g.initialize((ECGenParameterSpec) param);
        }
        KeyPair kp = g.generateKeyPair();
        String what = param instanceof ECGenParameterSpec ? ((ECGenParameterSpec) param).getName() : param.toString();
        check(g.getProvider() == p && inToken(kp.getPrivate()), alg + " " + what + " key pair generated in the token");
        return kp;
    }

    /** Signs with the token, verifies with `soft`, writes pub + sig for openssl. */
    static void sign(String name, String alg, PSSParameterSpec pss, KeyPair kp, String soft, byte[] data)
            throws Exception {
        Signature s = Signature.getInstance(alg, p);
        if (pss != null) {
            s.setParameter(pss);
        }
        s.initSign(kp.getPrivate());
        // Two updates: multi-part signing.
        s.update(data, 0, 10);
        s.update(data, 10, data.length - 10);
        byte[] sig = s.sign();
        check(s.getProvider() == p, name + " signed by SunPKCS11");

        // SunRsaSign names PSS with any digest "RSASSA-PSS" (the digest is in the parameters).
        Signature v = Signature.getInstance(alg.endsWith("RSASSA-PSS") ? "RSASSA-PSS" : alg, soft);
        if (pss != null) {
            v.setParameter(pss);
        }
        PublicKey pub = java.security.KeyFactory.getInstance(kp.getPublic().getAlgorithm(), soft)
                .generatePublic(new java.security.spec.X509EncodedKeySpec(kp.getPublic().getEncoded()));
        v.initVerify(pub);
        v.update(data);
        check(v.verify(sig), name + " verified by " + soft);

        // The token verifies it too, and rejects a changed message.
        Signature tv = Signature.getInstance(alg, p);
        if (pss != null) {
            tv.setParameter(pss);
        }
        tv.initVerify(kp.getPublic());
        tv.update(data);
        check(tv.verify(sig), name + " verified by the token");
        tv.initVerify(kp.getPublic());
        tv.update("another message".getBytes(StandardCharsets.UTF_8));
        check(!tv.verify(sig), name + " of another message rejected by the token");

        Files.write(out.resolve(name + ".pub.der"), kp.getPublic().getEncoded());
        Files.write(out.resolve(name + ".sig"), sig);
    }

    static byte[] bytes(int n, int seed) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) {
            b[i] = (byte) (i * 31 + seed);
        }
        return b;
    }

    public static void main(String[] args) throws Exception {
        String cfg = args[0];
        out = Path.of(args[1]);
        char[] pin = args[2].toCharArray();
        String aesLabel = args[3];

        p = Security.getProvider("SunPKCS11").configure(cfg);
        Security.addProvider(p);
        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, pin);
        check(true, "logged in to " + p.getName());

        byte[] data = "signed by FerroHSM through SunPKCS11\n".getBytes(StandardCharsets.UTF_8);
        Files.write(out.resolve("data.txt"), data);

        // Signatures.
        KeyPair rsa = pair("RSA", 2048);
        sign("sha256withrsa", "SHA256withRSA", null, rsa, "SunRsaSign", data);
        PSSParameterSpec pss = new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);
        sign("rsassa-pss", "RSASSA-PSS", pss, rsa, "SunRsaSign", data);
        sign("sha256withrsassa-pss", "SHA256withRSASSA-PSS", pss, rsa, "SunRsaSign", data);
        KeyPair p256 = pair("EC", new ECGenParameterSpec("secp256r1"));
        sign("sha256withecdsa", "SHA256withECDSA", null, p256, "SunEC", data);
        KeyPair p384 = pair("EC", new ECGenParameterSpec("secp384r1"));
        sign("sha384withecdsa", "SHA384withECDSA", null, p384, "SunEC", data);

        // RSA encryption. JDK 17's SunPKCS11 registers RSA/ECB/PKCS1Padding and NoPadding
        // only (no OAEP Cipher: see the README), so OAEP is exercised when the JDK offers it.
        byte[] secret = bytes(48, 7);
        PublicKey rsaPubSoft = java.security.KeyFactory.getInstance("RSA", "SunRsaSign")
                .generatePublic(new java.security.spec.X509EncodedKeySpec(rsa.getPublic().getEncoded()));
        Cipher pkcs1 = Cipher.getInstance("RSA/ECB/PKCS1Padding", p);
        check(pkcs1.getProvider() == p, "RSA/ECB/PKCS1Padding from SunPKCS11");
        Cipher softPkcs1 = Cipher.getInstance("RSA/ECB/PKCS1Padding", "SunJCE");
        softPkcs1.init(Cipher.ENCRYPT_MODE, rsaPubSoft);
        byte[] pct = softPkcs1.doFinal(secret);
        pkcs1.init(Cipher.DECRYPT_MODE, rsa.getPrivate());
        check(Arrays.equals(pkcs1.doFinal(pct), secret), "RSA PKCS#1 v1.5: SunJCE encrypts, the token decrypts");
        Cipher oaep = null;
        try {
            oaep = Cipher.getInstance("RSA/ECB/OAEPWithSHA-256AndMGF1Padding", p);
        } catch (java.security.NoSuchAlgorithmException | javax.crypto.NoSuchPaddingException e) {
            System.out.println("NOTE: this JDK's SunPKCS11 has no RSA/ECB/OAEPWithSHA-256AndMGF1Padding ("
                    + System.getProperty("java.version") + ")");
        }
        if (oaep != null) {
            OAEPParameterSpec oaepSpec = new OAEPParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256,
                    PSource.PSpecified.DEFAULT);
            Cipher softOaep = Cipher.getInstance("RSA/ECB/OAEPPadding", "SunJCE");
            softOaep.init(Cipher.ENCRYPT_MODE, rsaPubSoft, oaepSpec);
            byte[] oct = softOaep.doFinal(secret);
            oaep.init(Cipher.DECRYPT_MODE, rsa.getPrivate(), oaepSpec);
            check(Arrays.equals(oaep.doFinal(oct), secret), "OAEP: SunJCE encrypts, the token decrypts");
        }

        // AES-GCM with the token's persistent AES key (generated by pkcs11-tool).
        SecretKey tokenAes = (SecretKey) ks.getKey(aesLabel, pin);
        check(tokenAes != null && inToken(tokenAes), "token AES key '" + aesLabel + "' found through the KeyStore");
        byte[] iv = bytes(12, 3);
        byte[] aad = "header".getBytes(StandardCharsets.UTF_8);
        byte[] plain = bytes(1000, 11);
        Cipher gcm = Cipher.getInstance("AES/GCM/NoPadding", p);
        check(gcm.getProvider() == p, "AES/GCM/NoPadding from SunPKCS11");
        gcm.init(Cipher.ENCRYPT_MODE, tokenAes, new GCMParameterSpec(128, iv));
        gcm.updateAAD(aad);
        byte[] gct = gcm.doFinal(plain);
        check(gct.length == plain.length + 16, "GCM ciphertext carries a 16-byte tag");
        gcm.init(Cipher.DECRYPT_MODE, tokenAes, new GCMParameterSpec(128, iv));
        gcm.updateAAD(aad);
        check(Arrays.equals(gcm.doFinal(gct), plain), "GCM round trip with the token key");
        byte[] bad = gct.clone();
        bad[5] ^= 1;
        gcm.init(Cipher.DECRYPT_MODE, tokenAes, new GCMParameterSpec(128, iv));
        gcm.updateAAD(aad);
        boolean rejected = false;
        try {
            gcm.doFinal(bad);
        } catch (AEADBadTagException e) {
            rejected = true;
        }
        check(rejected, "GCM rejects a changed ciphertext (AEADBadTagException)");

        // Known answers: the same key value in the token (imported by the provider) and in
        // SunJCE give the same bytes.
        SecretKeySpec known = new SecretKeySpec(bytes(32, 99), "AES");
        gcm.init(Cipher.ENCRYPT_MODE, known, new GCMParameterSpec(128, iv));
        gcm.updateAAD(aad);
        byte[] ours = gcm.doFinal(plain);
        Cipher sgcm = Cipher.getInstance("AES/GCM/NoPadding", "SunJCE");
        sgcm.init(Cipher.ENCRYPT_MODE, known, new GCMParameterSpec(128, iv));
        sgcm.updateAAD(aad);
        check(Arrays.equals(ours, sgcm.doFinal(plain)), "GCM equals SunJCE for the same key and IV");

        // AES-CBC with PKCS#5 padding, with a KeyGenerator key and against SunJCE.
        KeyGenerator kg = KeyGenerator.getInstance("AES", p);
        kg.init(256);
        SecretKey genAes = kg.generateKey();
        check(kg.getProvider() == p && inToken(genAes), "KeyGenerator AES-256 in the token");
        byte[] civ = bytes(16, 5);
        byte[] odd = bytes(1001, 17);
        Cipher cbc = Cipher.getInstance("AES/CBC/PKCS5Padding", p);
        check(cbc.getProvider() == p, "AES/CBC/PKCS5Padding from SunPKCS11");
        cbc.init(Cipher.ENCRYPT_MODE, genAes, new IvParameterSpec(civ));
        byte[] part1 = cbc.update(odd, 0, 100);
        byte[] part2 = cbc.doFinal(odd, 100, odd.length - 100);
        byte[] cct = new byte[(part1 == null ? 0 : part1.length) + part2.length];
        if (part1 != null) {
            System.arraycopy(part1, 0, cct, 0, part1.length);
        }
        System.arraycopy(part2, 0, cct, cct.length - part2.length, part2.length);
        check(cct.length == 1008, "CBC-PAD pads 1001 bytes to 1008");
        cbc.init(Cipher.DECRYPT_MODE, genAes, new IvParameterSpec(civ));
        check(Arrays.equals(cbc.doFinal(cct), odd), "CBC-PAD round trip with a generated key");
        cbc.init(Cipher.ENCRYPT_MODE, known, new IvParameterSpec(civ));
        byte[] kct = cbc.doFinal(odd);
        Cipher scbc = Cipher.getInstance("AES/CBC/PKCS5Padding", "SunJCE");
        scbc.init(Cipher.ENCRYPT_MODE, known, new IvParameterSpec(civ));
        check(Arrays.equals(kct, scbc.doFinal(odd)), "CBC-PAD equals SunJCE for the same key and IV");

        // HMAC-SHA256: a generated key, and known answers against SunJCE.
        KeyGenerator hg = KeyGenerator.getInstance("HmacSHA256", p);
        SecretKey hkey = hg.generateKey();
        check(hg.getProvider() == p && inToken(hkey), "KeyGenerator HmacSHA256 in the token");
        Mac mac = Mac.getInstance("HmacSHA256", p);
        check(mac.getProvider() == p, "Mac HmacSHA256 from SunPKCS11");
        mac.init(hkey);
        byte[] m1 = mac.doFinal(data);
        mac.update(data, 0, 5);
        mac.update(data, 5, data.length - 5);
        byte[] m2 = mac.doFinal();
        check(m1.length == 32 && Arrays.equals(m1, m2), "HMAC with the generated key, single and multi-part");
        SecretKeySpec hknown = new SecretKeySpec(bytes(32, 42), "HmacSHA256");
        mac.init(hknown);
        byte[] hm = mac.doFinal(data);
        Mac smac = Mac.getInstance("HmacSHA256", "SunJCE");
        smac.init(hknown);
        check(Arrays.equals(hm, smac.doFinal(data)), "HMAC equals SunJCE for the same key");

        // SecureRandom from the provider.
        SecureRandom rnd = SecureRandom.getInstance("PKCS11", p);
        byte[] r1 = new byte[64];
        byte[] r2 = new byte[64];
        rnd.nextBytes(r1);
        rnd.nextBytes(r2);
        check(rnd.getProvider() == p && !Arrays.equals(r1, r2) && !Arrays.equals(r1, new byte[64]),
                "SecureRandom PKCS11 gives fresh bytes");

        // ECDH: a token P-256 key and a SunEC key agree on the same secret. The token's side
        // stays in the token (generateSecret("TlsPremasterSecret"), as JSSE uses it: a
        // sensitive, unextractable key) and is compared through HMAC-SHA256 against SunJCE
        // keyed with SunEC's secret.
        KeyPair mine = pair("EC", new ECGenParameterSpec("secp256r1"));
        KeyPairGenerator sg = KeyPairGenerator.getInstance("EC", "SunEC");
        sg.initialize(new ECGenParameterSpec("secp256r1"));
        KeyPair theirs = sg.generateKeyPair();
        KeyAgreement ka = KeyAgreement.getInstance("ECDH", p);
        check(ka.getProvider() == p, "KeyAgreement ECDH from SunPKCS11");
        ka.init(mine.getPrivate());
        ka.doPhase(theirs.getPublic(), true);
        SecretKey z = ka.generateSecret("TlsPremasterSecret");
        check(inToken(z), "ECDH secret derived in the token");
        KeyAgreement ska = KeyAgreement.getInstance("ECDH", "SunEC");
        ska.init(theirs.getPrivate());
        PublicKey minePubSoft = java.security.KeyFactory.getInstance("EC", "SunEC")
                .generatePublic(new java.security.spec.X509EncodedKeySpec(mine.getPublic().getEncoded()));
        ska.doPhase(minePubSoft, true);
        byte[] softZ = ska.generateSecret();
        mac.init(z);
        byte[] zm = mac.doFinal(data);
        smac.init(new SecretKeySpec(softZ, "HmacSHA256"));
        check(softZ.length == 32 && Arrays.equals(zm, smac.doFinal(data)), "ECDH secret equals SunEC's (compared by HMAC)");

        if (args.length > 4 && args[4].equals("ecdh-raw")) {
            // The secret as bytes (KeyAgreement.generateSecret()): SunPKCS11 derives a
            // CKK_GENERIC_SECRET and reads its CKA_VALUE.
            ka.init(mine.getPrivate());
            ka.doPhase(theirs.getPublic(), true);
            check(Arrays.equals(ka.generateSecret(), softZ), "ECDH generateSecret() bytes equal SunEC's");
        }

        System.out.println("ALL " + passed + " CHECKS PASSED");
    }
}
